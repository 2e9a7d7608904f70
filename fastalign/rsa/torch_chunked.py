"""RSA in vectorised PyTorch with bounded memory: every op on any device; on the CPU the default where
the C++ kernels do not apply (RDMs with more than a few features).

- RDMs: Gram matrices of a few RDMs at a time (``_GRAM_ELEMENTS``) accumulated over chunks of features
  (``_CHUNK_ELEMENTS`` per chunk), so 200,704 features never sit in memory as a float32 copy; the
  condensed triangle is read out in blocks of pairs, never through (n^2)-sized index tensors.
- Ranks: one stable sort, tie groups from cumulative max/min of positions (int64 throughout: exact at
  any length), average ranks scattered back.
- Permutation statistics: RDM vectors are ranked/normalised once; each permutation is a gather of
  pair indices, and a chunk of permutations against all RDMs is one batched matrix product.
- Cluster test: sign flips as a matrix, t curves batched, cluster masses by scatter-add over run ids.

float64 inputs stay float64; other floating inputs are computed in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch

from fastalign import _checks
from fastalign.rsa import common

_CHUNK_ELEMENTS = 1 << 24
_PAIRS_PER_BLOCK = 1 << 22
_GRAM_ELEMENTS = 1 << 24
_BUFFER_FEATURES = 1024  # features per centred chunk on the CPU (200 conditions: 800 KiB of float32)
_CACHED_PAIRS = 1 << 20  # 16 MiB of int64 indices at most per cached n


def _triu_blocks(n: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(rows, cols) int64 indices of the condensed order, about ``_PAIRS_PER_BLOCK`` pairs at a time.

    Blocks keep index tensors small for n in the tens of thousands (all n^2/2 pairs at once would need
    two int64 vectors of 1 GiB each for n = 16,540).
    """
    rows_per = max(1, _PAIRS_PER_BLOCK // max(n, 1))
    for r0 in range(0, n - 1, rows_per):
        r = torch.arange(r0, min(n - 1, r0 + rows_per), device=device)
        counts = n - 1 - r
        ri = torch.repeat_interleave(r, counts)
        starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        ci = torch.arange(ri.numel(), device=device) - starts + ri + 1
        yield ri, ci


@functools.lru_cache(maxsize=8)
def _triu_small(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """_triu_blocks' one block for an n within one block, kept: model and brain RDMs of a few hundred
    conditions are made again and again, and computing the indices cost as much as a pass over the RDMs."""
    with torch.inference_mode(False):  # normal tensors even when first made in inference mode
        ((ri, ci),) = _triu_blocks(n, device)
    return ri, ci


def _condensed(gram: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """(B, n, n) -> (B, n(n-1)/2): ``fn(rows, cols)`` gives the distances of those pairs, (B, n_block)."""
    b, n, _ = gram.shape
    out = gram.new_empty((b, common.n_pairs(n)))
    offset = 0
    small = (
        gram.device.type == "cpu"
        and common.n_pairs(n) <= _CACHED_PAIRS
        and n - 1 <= _PAIRS_PER_BLOCK // max(n, 1)
    )
    for ri, ci in [_triu_small(n, gram.device)] if small else _triu_blocks(n, gram.device):
        out[:, offset : offset + ri.numel()] = fn(ri, ci)
        offset += ri.numel()
    return out


def _chunks(xb: torch.Tensor, ct: torch.dtype) -> Iterator[torch.Tensor]:
    """Feature chunks of (B, n, p) in ct, each within ``_CHUNK_ELEMENTS``."""
    b, n, p = xb.shape
    step = max(1, _CHUNK_ELEMENTS // max(b * n, 1))
    for s in range(0, p, step):
        yield xb[..., s : s + step].to(ct)


def _fixed_chunks(x: torch.Tensor) -> bool:
    """Whether _gram takes fixed-width feature chunks through its reused buffer: on the CPU, for plain
    tensors that no autograd mode follows (backward, forward-mode duals, torch.func transforms: the
    buffer is written in place, which none of them can differentiate)."""
    if x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        return False
    return torch.autograd.forward_ad.unpack_dual(x).tangent is None


def _gram(xb: torch.Tensor, ct: torch.dtype, method: str, gram: torch.Tensor, fixed: bool) -> torch.Tensor:
    """(B, n, p) -> (B, n, n) Gram matrix in ct, accumulated over feature chunks into ``gram``
    (``fixed``: _fixed_chunks(xb), decided once per rdm call).

    correlation / cosine: of the (centred) patterns, then scaled by both patterns' inverse norms, which
    is rsatoolbox's Gram of unit-norm patterns up to rounding, so the distance is 1 - gram. One pass
    over the features: the norms accumulate beside the Gram (a scaled copy of the patterns would cost
    two more passes, more than the GEMM itself for a few hundred conditions). euclidean: of the
    patterns minus each feature's mean over conditions (distances do not change; cancellation in
    |a|^2 + |b|^2 - 2ab does).
    """
    b, n, p = xb.shape
    if fixed and method == "correlation" and xb.dtype == ct and xb.is_contiguous() and common.cpp_rows(xb):
        return _gram_rows(xb, gram)
    gram.zero_()
    mean = xb.sum(-1, dtype=ct, keepdim=True) / p if method == "correlation" else None
    sq = torch.zeros((b, n), dtype=ct, device=xb.device) if method in ("correlation", "cosine") else None
    # What the centred patterns' means still are, in float64: the mean above carries the rounding of a
    # sum in ct, which for patterns far from zero against their spread (float32 values near 1e6 varying
    # by 1) is a large share of that spread; _recentre takes it out of the Gram and the norms.
    resid = torch.zeros((b, n), dtype=torch.float64, device=xb.device) if mean is not None else None
    # On the CPU without autograd (_fixed_chunks) the centred chunks go into one small reused buffer: a
    # fresh (B, n, chunk) tensor per chunk is memory the system maps and zeroes anew each call (for 11 x
    # 200 x 4,096 float32, centring into it took 7x as long as into a buffer). Chunks of a fixed number
    # of features, whatever B and n: there an RDM gets the same bits alone or in a batch.
    buf = None
    if fixed:
        step = _BUFFER_FEATURES
        if method != "cosine":
            buf = torch.empty((b, n, min(step, p)), dtype=ct, device=xb.device)
        chunks: Iterator[torch.Tensor] = (xb[..., s : s + step] for s in range(0, p, step))
    else:
        chunks = _chunks(xb, ct)
    for c in chunks:
        if fixed:
            if buf is None:
                c = c.to(ct)
            else:
                centre = mean if mean is not None else c.mean(-2, keepdim=True, dtype=ct)
                c = torch.sub(c, centre, out=buf[..., : c.shape[-1]])
        elif mean is not None:
            c = c - mean
        elif sq is None:
            c = c - c.mean(-2, keepdim=True)
        if resid is not None:
            # summed in ct: the centred values are near their mean, so the sum carries no cancellation
            # (a float64 sum of float32 values is ten times slower in torch)
            resid = resid + c.sum(-1).to(torch.float64)
        if sq is not None:
            # out of place: vector_norm's backward needs its result unchanged
            sq += torch.linalg.vector_norm(c, dim=-1).square()
        gram.baddbmm_(c, c.transpose(-1, -2))
    if resid is not None and sq is not None:
        gram, sq = _recentre(gram, sq, resid / p, p)
    if sq is not None:
        if torch.compiler.is_compiling():
            # out of place: after a graph break (_recentre's check) gram and sq are tensors autograd saved
            # for the products before, and scaling them in place failed in backward
            inv = sq.rsqrt()
            gram = gram * inv[:, :, None] * inv[:, None, :]
        else:
            # in place, into the caller's reused Gram buffer (out of place, autograd would save the buffer
            # itself, which the next batch of RDMs overwrites)
            inv = sq.rsqrt_()
            gram.mul_(inv[:, :, None]).mul_(inv[:, None, :])
    return gram


def _gram_rows(xb: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """_gram's correlation Gram matrix through the C++ kernels: the means from one pass (rsa_row_stats,
    float64 sums), then rsa_gram_centered, which centres blocks of features as it packs them for its
    register tiles (each row's sum and sum of squares in the same pass) and computes only the upper
    triangle: where torch takes a pass each for the mean, the centring, the residual sums and the norms,
    and a GEMM does twice the products. The sums are float64, so the norms and the residual means are at
    least as exact as _gram's."""
    b, n, p = xb.shape
    mean = (common.row_stats(xb)[..., 2] / p).to(xb.dtype).reshape(-1)
    sums = torch.ops.fastalign.rsa_gram_centered(xb, mean, gram)
    resid, sq = sums[:, 0].view(b, n), sums[:, 1].view(b, n)
    gram, sq = _recentre(gram, sq, resid / p, p)
    inv = sq.rsqrt().to(gram.dtype)
    return gram.mul_(inv[:, :, None]).mul_(inv[:, None, :])


def _recentre(
    gram: torch.Tensor, sq: torch.Tensor, r: torch.Tensor, p: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gram matrix and squared norms of patterns c - r (r: their remaining means, float64), from those
    of c: sum_k (c_ik - r_i)(c_jk - r_j) = G_ij - p r_i r_j. Applied only where some p r_i^2 reaches
    2^-30 of its pattern's sum of squares; below that the correction is under half a float32 ulp of the
    norms, and every RDM keeps the bits it had without it."""
    shift = p * r * r
    if not bool((shift > sq.detach().to(torch.float64) * 2.0**-30).any()):
        return gram, sq
    outer = (p * r[:, :, None] * r[:, None, :]).to(gram.dtype)
    return gram - outer, sq - shift.to(sq.dtype)


def _row_slices(gram: torch.Tensor) -> bool:
    """Whether 1 - Gram is condensed row by row (_condensed_rows): on the CPU without autograd, for more
    pairs than the cached indices hold (there each call built its index blocks again: 4,000 conditions,
    133 -> 42 ms on 2 threads)."""
    n = gram.shape[-1]
    return gram.device.type == "cpu" and not gram.requires_grad and common.n_pairs(n) > _CACHED_PAIRS


def _condensed_rows(gram: torch.Tensor) -> torch.Tensor:
    """(B, n, n) Gram matrices of unit vectors -> (B, n(n-1)/2) 1 - gram in condensed order, one strided
    row slice at a time (1 - g is what the index path's -g + 1 gives, bit for bit)."""
    b, n, _ = gram.shape
    out = gram.new_empty((b, common.n_pairs(n)))
    offset = 0
    for i in range(n - 1):
        torch.sub(1, gram[:, i, i + 1 :], out=out[:, offset : offset + n - 1 - i])
        offset += n - 1 - i
    return out


def _distances(gram: torch.Tensor, method: str, p: int) -> torch.Tensor:
    """(B, n, n) Gram matrices from _gram -> (B, n(n-1)/2) distances."""
    n = gram.shape[-1]
    flat = gram.reshape(gram.shape[0], n * n)
    if method in ("correlation", "cosine"):
        if _row_slices(gram):
            return _condensed_rows(gram)
        return _condensed(gram, lambda r, c: flat.index_select(1, r * n + c).neg_().add_(1))
    diag = gram.diagonal(dim1=-2, dim2=-1)

    def euclid(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        g = flat.index_select(1, r * n + c).mul_(-2)
        return g.add_(diag.index_select(1, r)).add_(diag.index_select(1, c)).clamp_(min=0).div_(p)

    return _condensed(gram, euclid)


def rdm(x: torch.Tensor, method: str, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Condensed RDMs (see reference.rdm_reference for the definitions and shapes).

    RDMs are made a few at a time (``_GRAM_ELEMENTS`` Gram entries) into one reused buffer: a batch of
    1,000 RDMs never holds 1,000 n x n matrices, only their condensed outputs.
    """
    ct = _checks.compute_dtype(x)
    if method == "crossnobis":
        return _crossnobis(x, noise, ct)
    lead, (n, p) = x.shape[:-2], x.shape[-2:]
    xb = x.reshape(-1, n, p)
    out = torch.empty((xb.shape[0], common.n_pairs(n)), dtype=ct, device=x.device)
    # RDMs per block: their Gram matrices within _GRAM_ELEMENTS, and _gram's centred chunk of them
    # (B x n x up to _BUFFER_FEATURES) within _CHUNK_ELEMENTS
    step = max(1, _GRAM_ELEMENTS // (n * n))
    fixed = _fixed_chunks(xb)
    if fixed:
        step = max(1, min(step, _CHUNK_ELEMENTS // (n * min(p, _BUFFER_FEATURES))))
    buf = torch.empty((min(step, xb.shape[0]), n, n), dtype=ct, device=x.device)
    for b0 in range(0, xb.shape[0], step):
        chunk = xb[b0 : b0 + step]
        out[b0 : b0 + step] = _distances(_gram(chunk, ct, method, buf[: chunk.shape[0]], fixed), method, p)
    return out.reshape(*lead, -1)


def _crossnobis(x: torch.Tensor, noise: torch.Tensor | None, ct: torch.dtype) -> torch.Tensor:
    """Sum over folds f of (train_i - train_j) N (test_i - test_j), with the fold kernels summed first.

    The distance is linear in each fold's kernel ``train_f N test_f^T``, so one (n, n) accumulator holds
    them all: d_ij = K_ii + K_jj - K_ij - K_ji.
    """
    lead, (n_folds, n, p) = x.shape[:-3], x.shape[-3:]
    xb = x.reshape(-1, n_folds, n, p)
    b = xb.shape[0]
    kern = torch.zeros((b, n, n), dtype=ct, device=x.device)
    step = p if noise is not None else max(1, _CHUNK_ELEMENTS // max(b * n * n_folds, 1))
    for s in range(0, p, step):
        c = xb[..., s : s + step].to(ct)
        total = c.sum(1)
        for f in range(n_folds):
            test = c[:, f]
            train = (total - test) / (n_folds - 1)
            if noise is not None:
                test = test @ noise.to(ct).T
            kern.baddbmm_(train, test.transpose(-1, -2))
    diag = kern.diagonal(dim1=-2, dim2=-1)
    scale = 1.0 / (n_folds * p)
    out = _condensed(kern, lambda r, c: (diag[:, r] + diag[:, c] - kern[:, r, c] - kern[:, c, r]) * scale)
    return out.reshape(*lead, -1)


def rank(x: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last dim (scipy.stats.rankdata), float64, exact at any length."""
    n = x.shape[-1]
    vals, order = torch.sort(x, dim=-1, stable=True)
    pos = torch.arange(n, device=x.device).expand(vals.shape)
    start = torch.ones(vals.shape, dtype=torch.bool, device=x.device)
    start[..., 1:] = vals[..., 1:] != vals[..., :-1]
    end = torch.ones_like(start)
    end[..., :-1] = start[..., 1:]
    first = torch.where(start, pos, 0).cummax(-1).values
    last = torch.where(end, pos, n).flip(-1).cummin(-1).values.flip(-1)
    avg = (first + last + 2).to(torch.float64) / 2
    return torch.empty_like(avg).scatter_(-1, order, avg)


def prepare(v: torch.Tensor, method: str) -> torch.Tensor:
    """The per-RDM vector z of a linear method (common.center_scale of the values or their ranks)."""
    ct = _checks.compute_dtype(v)
    z = rank(v).to(ct) if method in ("spearman", "rho_a") else v.to(ct)
    return common.center_scale(z, method)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_k a[..., k] b[..., k] with broadcasting, as batched matrix products."""
    return common.dot(a, b)


def _tau_a(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-a by sign products, one block of pairs at a time (O(K^2) work, O(chunk) memory)."""
    a, b = torch.broadcast_tensors(a, b)
    lead, k = a.shape[:-1], a.shape[-1]
    ab, bb = a.reshape(-1, k), b.reshape(-1, k)
    total = torch.zeros(ab.shape[0], dtype=torch.int64, device=a.device)
    step = max(1, _CHUNK_ELEMENTS // max(ab.shape[0] * k, 1))
    for s in range(0, k, step):
        sa = torch.sign(ab[:, s : s + step, None] - ab[:, None, :])
        sb = torch.sign(bb[:, s : s + step, None] - bb[:, None, :])
        total += (sa * sb).sum((-2, -1), dtype=torch.int64)
    return ((total // 2).to(_checks.compute_dtype(a)) / common.n_pairs(k)).reshape(lead)


def compare(a: torch.Tensor, b: torch.Tensor, method: str) -> torch.Tensor:
    """RDM similarities broadcast over leading dims (see reference.compare_reference)."""
    if method == "kendall_tau_a":
        return _tau_a(a, b)
    return _dot(prepare(a, method), prepare(b, method)) * common.linear_scale(method, a.shape[-1])


def permutation_null(fixed: torch.Tensor, moving: torch.Tensor, perms: torch.Tensor, n: int) -> torch.Tensor:
    """(P, *broadcast) with entry p = sum_k fixed[..., k] * moving[..., idx_p[k]].

    idx_p are the condensed indices of permutation p (common.permuted_pair_indices); permutations are
    processed in chunks so the gathered copies of ``moving`` stay within ``_CHUNK_ELEMENTS``.
    """
    k = moving.shape[-1]
    shape = torch.broadcast_shapes(fixed.shape[:-1], moving.shape[:-1])
    pad = [1] * (len(shape) - (moving.dim() - 1))  # keeps the permutation dim left of the batch dims
    out = torch.empty((perms.shape[0], *shape), dtype=fixed.dtype, device=fixed.device)
    step = max(1, _CHUNK_ELEMENTS // max(moving.numel(), k))
    perms = perms.to(fixed.device)
    fixed = fixed.contiguous()  # once, not in every chunk's einsum
    for s in range(0, perms.shape[0], step):
        idx = common.permuted_pair_indices(perms[s : s + step], n)
        g = moving[..., idx].movedim(-2, 0)  # (Pc, *moving_lead, K)
        out[s : s + step] = torch.einsum(
            "...k,...k->...", fixed, g.reshape(g.shape[0], *pad, *moving.shape[:-1], k)
        )
    return out


def _max_run_mass(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Largest sum of v over a maximal run of True in mask, per row of (P, T); 0 when there is none."""
    start = mask.clone()
    start[:, 1:] &= ~mask[:, :-1]
    run = start.cumsum(1) * mask  # 0 outside runs, 1..R inside
    sums = torch.zeros((v.shape[0], v.shape[1] + 1), dtype=v.dtype, device=v.device)
    sums.scatter_add_(1, run, torch.where(mask, v, 0))
    return sums[:, 1:].amax(1).clamp_(min=0)


def cluster_null(x: torch.Tensor, threshold: float, tail: int, flips: torch.Tensor) -> torch.Tensor:
    """(P,) max cluster mass of the t curve of each sign-flipped x (n_subjects, n_times).

    Positive clusters are runs of t > threshold with mass sum(t); negative ones runs of t < -threshold
    with mass sum(-t); tail 0 takes the larger of both (threshold must be positive).
    """
    out = torch.empty(flips.shape[0], dtype=x.dtype, device=x.device)
    flips = flips.to(device=x.device, dtype=x.dtype)
    n = x.shape[0]
    # A flip changes the subjects' signs, not their squares: every flip's mean is one matmul and its sum
    # of squared deviations sum(x^2) - n mean^2, with no (P, n_subjects, n_times) tensor. Where that
    # subtraction cancels more than 20 bits (subjects nearly equal), the two-pass sum replaces it.
    squares = (x * x).sum(0)
    step = max(1, _CHUNK_ELEMENTS // max(x.shape[1], 1))
    for s in range(0, flips.shape[0], step):
        f = flips[s : s + step]
        mean = (f @ x) / n
        ss = squares - n * mean * mean
        rows = (ss < squares * 2.0**-20).any(1).nonzero()[:, 0]
        if rows.numel():
            d = f[rows, :, None] * x - mean[rows, None, :]
            ss[rows] = (d * d).sum(1)
        t = mean / torch.sqrt(ss / ((n - 1) * n))
        best = torch.zeros(t.shape[0], dtype=x.dtype, device=x.device)
        if tail >= 0:
            best = torch.maximum(best, _max_run_mass(t, t > threshold))
        if tail <= 0:
            best = torch.maximum(best, _max_run_mass(-t, t < -threshold))
        out[s : s + step] = best
    return out
