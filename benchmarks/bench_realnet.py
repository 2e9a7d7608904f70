"""ReAlnet training step: the published step's structure vs fastalign's single-pass step.

Images/s and peak memory of one training step (batch 16, 224 px, EEG head of 340 outputs, beta = 100,
Adam lr 2e-5), on the same batch and the same initial weights:

- ``published``: the step of code/Train_ReAlnet.ipynb (ZitongLu1996/ReAlnet) rebuilt faithfully: the
  ``Encoder`` runs the whole student CORnet-S for the logits, then its V1, V2, V4 and IT blocks again one
  by one for the head (``view(N, -1)``, Linear + ReLU per area, concatenation, Linear); the frozen teacher
  CORnet-S (eval mode, the student's initial weights, as both start from the same checkpoint) runs every
  step with autograd recording, as in the notebook (no ``torch.no_grad`` there), and its argmax is the CE
  target (the notebooks' hard target; ReAlnet.py's soft target would also backpropagate through the
  teacher, whose parameters require grad, so its step is slower still); ``loss = beta * (MSE + C) + CE``
  with C built from per-pair Pearson correlations packed by ``torch.tensor(list)`` (no gradient; the
  per-pair ``torchmetrics.functional.pearson_corrcoef`` of bench_correlation.py, or its labelled
  re-implementation without torchmetrics: ``meta.published_pearson``); Adam.
  The DataParallel wrapper is left out (with one device or none it calls the module directly).
- ``fastalign``: :class:`~fastalign.models.ReAlnet`, whose one forward gives the logits and the response
  (the backbone runs once); the teacher's targets are computed once per image, outside the step; C is
  the differentiable :func:`~fastalign.contrastive.correlation_contrastive_loss`; the same Adam.
  Every conv is ``F.conv2d``, as in the original CORnet-S.
- ``fastalign-convs``: the same with ``fuse_training(None, convs="auto")``, what ``fastalign align``
  trains with: on a CPU, the wide 3x3 convs with fewer output pixels than channels run as im2col matrix
  products (at 224 px and batch 16 IT's, which qualify up to batch 41; at 32 px all of them). GPUs keep
  cuDNN, so there the row would time the ``fastalign`` computation and is skipped with the reason. Its
  loss terms must equal the ``fastalign`` row's to 1e-5 (relative above 1: ``meta.equal_losses_convs``).
- ``fastalign-fused``: the same with ``fuse_training()`` (fused BatchNorm + add + ReLU): only where its
  Triton kernels run (CUDA); on a CPU ``fuse_training("auto")`` runs the eager reference for the norms,
  the computation of the ``fastalign-convs`` row, so the row is skipped with the reason.

Before timing, the loss terms of both steps are computed on the same batch from the same weights in
float32 and must agree to 1e-5 (``meta.equal_losses``); the gradients are compared with our contrast
term detached (the published one carries none), so they must agree too (``meta.equal_gradients``). The
variants are then timed in interleaved rounds (every round runs each once, so all see the same machine
load): median, p20-p80 and best over rounds; "x published" is the median of per-round time ratios.
bf16 rows run both steps under autocast where the device has bf16 (CPU: oneDNN's bf16 kernels); else
they are skipped with the reason. Memory, CPU: the growth of the peak resident set during one step
after warm-up (``harness.peak_memory_bytes``: VmHWM reset through /proc/self/clear_refs; no
tracemalloc, which sees no tensor memory); CUDA: ``torch.cuda.max_memory_allocated`` growth. "held MB"
is what the step keeps between steps: parameters, buffers, gradients and Adam state (and the teacher).

fastalign's one-off cost, as bench_decode reports its data preparation: the teacher's targets of the
batch's images, one eval-mode forward without gradients (what ``fastalign align`` computes once per image
before training, ``_teacher_targets``), timed after the rounds (median over ``--rounds`` calls after one
warm-up) and given as its own row, "once per image": an epoch of n images costs n / batch such calls once,
not every step.

    flock /tmp/fastalign-bench.lock python benchmarks/bench_realnet.py     # writes results/realnet-*.json
    python benchmarks/bench_realnet.py --quick   # a smoke run: 32 px, 2 rounds, no result file
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness
from bench_correlation import PUBLISHED_PEARSON, published_torchmetrics

from fastalign.cli.common import nonnegative_int, positive_int
from fastalign.contrastive import correlation_contrastive_loss
from fastalign.models import CORnetS, ReAlnet
from fastalign.norm_act import batch_norm_act

NAME = "realnet"
BETA = 100.0
LR = 2e-5
TOLERANCE = 1e-5
TERMS = ("ce", "mse", "contrast", "total")
IMPLS = ("published", "fastalign", "fastalign-convs", "fastalign-fused")
COLUMNS = [
    ["impl", "implementation"],
    ["dtype", "dtype"],
    ["passes", "backbone passes"],
    ["batch", "batch"],
    ["size", "px"],
    ["median_ms", "median ms"],
    ["spread_ms", "p20-p80 ms"],
    ["best_ms", "best ms"],
    ["images_per_s", "images/s"],
    ["speedup", "x published"],
    ["peak_mem_mb", "peak MB"],
    ["held_mb", "held MB"],
    ["status", "status"],
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The published Encoder's parameter name prefixes -> ReAlnet's.
_OUR_NAMES = {"realnet.": "backbone.", "fc_v1.": "head.proj.V1.", "fc_v2.": "head.proj.V2.",
              "fc_v4.": "head.proj.V4.", "fc_it.": "head.proj.IT.", "fc.": "head.out."}  # fmt: skip


class PublishedEncoder(nn.Module):
    """The published ``Encoder``: the student CORnet-S and the head layers fc_v1, fc_v2, fc_v4, fc_it, fc."""

    def __init__(self, realnet: CORnetS, in_features: dict[str, int], width: int, n_out: int) -> None:
        super().__init__()
        self.realnet = realnet
        self.fc_v1 = nn.Linear(in_features["V1"], width)
        self.fc_v2 = nn.Linear(in_features["V2"], width)
        self.fc_v4 = nn.Linear(in_features["V4"], width)
        self.fc_it = nn.Linear(in_features["IT"], width)
        self.fc = nn.Linear(4 * width, n_out)
        self.activation = nn.ReLU()

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, response): a whole forward, then the blocks again, one by one, for the head."""
        outputs = self.realnet(imgs)
        n = len(imgs)
        v1 = self.realnet.V1(imgs)
        v2 = self.realnet.V2(v1)
        v4 = self.realnet.V4(v2)
        it = self.realnet.IT(v4)
        feats = [
            self.activation(fc(out.view(n, -1)))
            for fc, out in ((self.fc_v1, v1), (self.fc_v2, v2), (self.fc_v4, v4), (self.fc_it, it))
        ]
        return outputs, self.fc(torch.cat(feats, dim=1))


def published_from(model: ReAlnet) -> PublishedEncoder:
    """A PublishedEncoder holding a copy of ``model``'s weights (the published head's key names)."""
    like = next(model.parameters())
    student = CORnetS().to(like.device)
    student.load_state_dict(model.backbone.state_dict())
    in_features = {a: math.prod(shape) for a, shape in model.tap_shapes.items()}
    enc = PublishedEncoder(student, in_features, model.width, model.n_out).to(like.device)
    for area, fc in (("V1", enc.fc_v1), ("V2", enc.fc_v2), ("V4", enc.fc_v4), ("IT", enc.fc_it)):
        fc.load_state_dict(model.head.proj[area].state_dict())
    enc.fc.load_state_dict(model.head.out.state_dict())
    return enc


def published_losses(
    enc: PublishedEncoder, teacher: CORnetS, x: torch.Tensor, eeg: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The notebook's step up to the loss: Encoder forward, teacher forward (autograd on), the terms."""
    outputs, pred = enc(x)
    targets = torch.argmax(teacher(x), dim=1)
    ce = F.cross_entropy(outputs, targets)
    mse = F.mse_loss(pred, eeg)
    contrast = published_torchmetrics(pred, eeg)  # Gen_criterion's loss2: a value, no gradient
    return {"ce": ce, "mse": mse, "contrast": contrast, "total": BETA * (mse + contrast) + ce}


def fastalign_losses(
    logits: torch.Tensor, pred: torch.Tensor, eeg: torch.Tensor, targets: torch.Tensor, detach: bool = False
) -> dict[str, torch.Tensor]:
    """Our loss terms from one forward's outputs and precomputed teacher targets."""
    ce = F.cross_entropy(logits, targets)
    mse = F.mse_loss(pred, eeg)
    contrast = correlation_contrastive_loss(pred, eeg, detach=detach)
    return {"ce": ce, "mse": mse, "contrast": contrast, "total": BETA * (mse + contrast) + ce}


def _autocast(device: str, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def _step(
    opt: torch.optim.Optimizer, losses: Callable[[], dict[str, torch.Tensor]], ctx: Callable[[], Any]
) -> Callable[[], dict[str, float]]:
    """One training step: zero the gradients, the loss terms (under ``ctx``), backward, Adam; the terms'
    values are read back, as a training loop that logs them does (the notebook calls .item() too)."""

    def run() -> dict[str, float]:
        opt.zero_grad(set_to_none=True)
        with ctx():
            terms = losses()
        terms["total"].backward()
        opt.step()
        return {k: v.item() for k, v in terms.items()}

    return run


@contextlib.contextmanager
def _fused(model: ReAlnet, device: str, dtype: torch.dtype, backend: str | None = "triton") -> Iterator[None]:
    """A fuse_training path (and autocast) for the duration: the fastalign rows share the model, which
    otherwise runs the original modules and F.conv2d."""
    model.fuse_training(backend, convs="auto")
    try:
        with _autocast(device, dtype):
            yield
    finally:
        model.fuse_training(None, convs=None)


def convs_unavailable(device: str) -> str | None:
    """Why the fastalign-convs row would time nothing new on ``device``, or None."""
    if device.startswith("cpu"):
        return None
    return "convs='auto' runs im2col products for CPU tensors only (GPUs keep cuDNN): the 'fastalign' row"


def _held_bytes(modules: list[nn.Module], opt: torch.optim.Optimizer) -> int:
    """Parameters, buffers, gradients and optimizer state kept between steps."""
    tensors: list[torch.Tensor] = []
    for m in modules:
        tensors += list(m.parameters()) + list(m.buffers())
        tensors += [p.grad for p in m.parameters() if p.grad is not None]
    for state in opt.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def bf16_unavailable(device: str) -> str | None:
    """Why bf16 autocast cannot run at speed on ``device``, or None."""
    if device.startswith("cuda"):
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16"
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    from fastalign.models.cornet.fused import mkldnn_dtype_unsupported

    reason = mkldnn_dtype_unsupported(torch.bfloat16) or "no oneDNN bf16 kernels on this CPU"
    return f"torch.ops.mkldnn._is_mkldnn_bf16_supported() is False: {reason}"


def fused_unavailable(device: str) -> str | None:
    """Why the fused training path cannot run on ``device`` (the backend's own refusal), or None."""
    x = torch.randn(2, 2, 2, 2, device=device)
    try:
        batch_norm_act(x, torch.ones(2, device=device), torch.zeros(2, device=device), backend="triton")
    except NotImplementedError as exc:
        return (
            f"{exc}; fuse_training('auto') there runs the eager reference for the norms, the computation "
            "of the 'fastalign-convs' row"
        )
    return None


def _grads(module: nn.Module, rename: dict[str, str]) -> dict[str, torch.Tensor]:
    """Each parameter's gradient (float64), keyed by its name with the ``rename`` prefixes replaced."""
    out = {}
    for name, param in module.named_parameters():
        for old, new in rename.items():
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        assert param.grad is not None, f"{name} got no gradient"
        out[name] = param.grad.double()
    return out


def _grad_agreement(enc: PublishedEncoder, model: ReAlnet) -> dict[str, Any]:
    """Relative L2 distance of the two models' gradients, over all parameters and the worst one."""
    g_pub, g_ours = _grads(enc, _OUR_NAMES), _grads(model, {})
    assert g_pub.keys() == g_ours.keys(), sorted(g_pub.keys() ^ g_ours.keys())
    dist = {name: float((g - g_ours[name]).norm()) for name, g in g_pub.items()}
    norm = {name: float(g.norm()) for name, g in g_pub.items()}
    rel = {name: dist[name] / norm[name] if norm[name] > 0 else dist[name] for name in g_pub}
    worst = max(rel, key=rel.__getitem__)
    return {
        "what": "published step's gradient vs ours with the contrast detached (the published C has none)",
        "global_rel_l2": (sum(d * d for d in dist.values()) / sum(n * n for n in norm.values())) ** 0.5,
        "max_param_rel_l2": rel[worst],
        "max_param": worst,
        "params": len(g_pub),
    }


def check_equal(
    model: ReAlnet,
    enc: PublishedEncoder,
    teacher: CORnetS,
    x: torch.Tensor,
    eeg: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loss terms of both steps from the same weights and batch (fp32), and their gradients.

    Ours is backpropagated with the contrast detached, as the published C is, so the two gradients are
    the same function; leaves every gradient cleared.
    """
    pub = published_losses(enc, teacher, x, eeg)
    pub["total"].backward()
    logits, pred = model(x)
    ours = fastalign_losses(logits, pred, eeg, targets)
    detached = fastalign_losses(logits, pred, eeg, targets, detach=True)
    detached["total"].backward()
    losses: dict[str, Any] = {"tolerance": TOLERANCE, "beta": BETA}
    for k in TERMS:
        p, o = float(pub[k]), float(ours[k])
        losses[k] = {"published": p, "fastalign": o, "abs_diff": abs(p - o)}
    losses["detached_equals_differentiable"] = all(float(detached[k]) == float(ours[k]) for k in TERMS)
    losses["equal"] = all(losses[k]["abs_diff"] <= TOLERANCE for k in TERMS)
    grads = _grad_agreement(enc, model)
    for m in (enc, model, teacher):
        m.zero_grad(set_to_none=True)
    return losses, grads


def check_equal_convs(
    model: ReAlnet, x: torch.Tensor, eeg: torch.Tensor, targets: torch.Tensor
) -> dict[str, Any]:
    """Our loss terms with F.conv2d and with convs="auto" from the same weights and batch (fp32, no
    gradient; BatchNorm's running statistics are put back): the two rows compute the same function, to
    TOLERANCE relative above 1 and absolute below."""
    out: dict[str, Any] = {"tolerance": TOLERANCE}
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = fastalign_losses(*model(x), eeg, targets)
        model.fuse_training(None, convs="auto")
        try:
            fast = fastalign_losses(*model(x), eeg, targets)
        finally:
            model.fuse_training(None, convs=None)
            model.load_state_dict(buffers)
    for k in TERMS:
        a, b = float(plain[k]), float(fast[k])
        out[k] = {"conv2d": a, "convs_auto": b, "abs_diff": abs(a - b)}
    out["equal"] = all(out[k]["abs_diff"] <= TOLERANCE * max(1.0, abs(out[k]["conv2d"])) for k in TERMS)
    return out


def _summary(times: list[float]) -> dict[str, Any]:
    p20, p80 = harness.spread(times)
    return {
        "median_ms": statistics.median(times),
        "p20_ms": p20,
        "p80_ms": p80,
        "spread_ms": f"{p20:.4g}-{p80:.4g}",
        "best_ms": min(times),
        "times_ms": times,
        "reps": len(times),
    }


def teacher_row(teacher: CORnetS, x: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """The one-off teacher-target pass for a batch: eval mode, no gradients, argmax (fp32)."""

    def targets() -> torch.Tensor:
        with torch.no_grad():
            return teacher(x).argmax(dim=1)

    t = harness.time_fn(targets, args.device, warmup=1, rep=args.rounds)
    return {
        "impl": "fastalign teacher targets",
        "dtype": "fp32",
        "passes": "1 teacher, no grad: once per image, before training",
        "batch": args.batch,
        "size": args.size,
        "n_out": args.n_out,
        **{k: t[k] for k in ("median_ms", "p20_ms", "p80_ms", "reps")},
        "spread_ms": f"{t['p20_ms']:.4g}-{t['p80_ms']:.4g}",
        "best_ms": t["min_ms"],
        "images_per_s": args.batch / (t["median_ms"] * 1e-3),
        "status": "ok (one-off, not per step)",
    }


def bench(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    device = args.device
    torch.manual_seed(0)
    model = ReAlnet(args.n_out, image_size=args.size).to(device).train()
    enc = published_from(model).train()
    teacher = CORnetS().to(device)
    teacher.load_state_dict(model.backbone.state_dict())
    teacher.eval()  # the notebook's cornet.eval(); its parameters keep requires_grad, as there
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    eeg = torch.randn(args.batch, args.n_out, generator=g).to(device)  # z-scored responses
    with torch.no_grad():  # once per image, outside the step (the training data's cache)
        targets = teacher(x).argmax(dim=1)

    t0 = time.perf_counter()
    model.fuse_training(None, convs=None)  # the original convs unless a row's context says otherwise
    losses, grads = check_equal(model, enc, teacher, x, eeg, targets)
    print("equal losses:", {k: losses[k] for k in TERMS}, "equal:", losses["equal"], flush=True)
    print("gradients (contrast detached):", grads, flush=True)
    equal_convs = check_equal_convs(model, x, eeg, targets)
    print("equal losses with convs='auto':", equal_convs, flush=True)
    check_s = time.perf_counter() - t0

    pub_opt = torch.optim.Adam(enc.parameters(), lr=LR)
    our_opt = torch.optim.Adam(model.parameters(), lr=LR)

    def published() -> dict[str, torch.Tensor]:
        return published_losses(enc, teacher, x, eeg)

    def ours() -> dict[str, torch.Tensor]:
        logits, pred = model(x)
        return fastalign_losses(logits, pred, eeg, targets)

    skipped: dict[str, str] = {}
    fused_reason = fused_unavailable(device)
    convs_reason = convs_unavailable(device)
    cases: list[tuple[str, str, Callable[[], Any]]] = []
    for dname in args.dtypes:
        reason = bf16_unavailable(device) if dname == "bf16" else None
        if reason is not None:
            skipped.update({f"{impl} {dname}": reason for impl in IMPLS})
            continue
        dtype = DTYPES[dname]
        autocast = functools.partial(_autocast, device, dtype)
        cases.append(("published", dname, _step(pub_opt, published, autocast)))
        cases.append(("fastalign", dname, _step(our_opt, ours, autocast)))
        if convs_reason is None:
            convs = functools.partial(_fused, model, device, dtype, None)
            cases.append(("fastalign-convs", dname, _step(our_opt, ours, convs)))
        else:
            skipped[f"fastalign-convs {dname}"] = convs_reason
        if fused_reason is None:
            fused = functools.partial(_fused, model, device, dtype)
            cases.append(("fastalign-fused", dname, _step(our_opt, ours, fused)))
        else:
            skipped[f"fastalign-fused {dname}"] = fused_reason
    for key, reason in skipped.items():
        print(f"skipped {key}: {reason}", flush=True)

    t0 = time.perf_counter()
    for impl, dname, fn in cases:
        for _ in range(args.warmup):  # Adam's state, allocator, oneDNN primitives
            harness.time_fn(fn, device, warmup=0, rep=1)
        print(f"warmed up {impl} {dname}", flush=True)
    warmup_s = time.perf_counter() - t0
    times: list[list[float]] = [[] for _ in cases]
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for i, (_, _, fn) in enumerate(cases):
            times[i].append(harness.time_fn(fn, device, warmup=0, rep=1)["median_ms"])
        print(f"round {r + 1}/{args.rounds} ms:", [f"{t[-1]:.0f}" for t in times], flush=True)
    rounds_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    by_key = {(impl, dname): t for (impl, dname, _), t in zip(cases, times, strict=True)}
    rows: list[dict[str, Any]] = []
    for (impl, dname, fn), t in zip(cases, times, strict=True):
        mem = harness.peak_memory_bytes(fn, device) if args.memory else None
        is_published = impl == "published"
        held = _held_bytes([enc, teacher] if is_published else [model], pub_opt if is_published else our_opt)
        base = by_key[("published", dname)]
        s = _summary(t)
        rows.append(
            {
                "impl": impl,
                "dtype": dname,
                "passes": "2 student + 1 teacher" if is_published else "1",
                "batch": args.batch,
                "size": args.size,
                "n_out": args.n_out,
                **s,
                "images_per_s": args.batch / (s["median_ms"] * 1e-3),
                "speedup": statistics.median([b / v for b, v in zip(base, t, strict=True)]),
                "peak_mem_mb": None if mem is None else mem / 2**20,
                "held_mb": held / 2**20,
                "status": "ok",
            }
        )
        print({k: rows[-1][k] for k in ("impl", "dtype", "median_ms", "images_per_s", "speedup",
                                         "peak_mem_mb", "held_mb")}, flush=True)  # fmt: skip
    memory_s = time.perf_counter() - t0
    rows.append(teacher_row(teacher, x, args))
    for key in skipped:
        impl, dname = key.split(" ")
        rows.append({"impl": impl, "dtype": dname, "batch": args.batch, "size": args.size,
                     "status": "skipped (see meta.skipped)"})  # fmt: skip
    meta = {
        "equal_losses": losses,
        "equal_losses_convs": equal_convs,
        "equal_gradients": grads,
        "skipped": skipped,
        "seconds": {"check": check_s, "warmup": warmup_s, "rounds": rounds_s, "memory": memory_s},
    }
    return rows, meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="smoke run: 32 px, 2 rounds, no result file")
    p.add_argument("--size", type=positive_int, default=None, help="image size (default 224, --quick 32)")
    p.add_argument("--batch", type=positive_int, default=16)
    p.add_argument("--n-out", type=positive_int, default=340, help="response size (340 EEG, 1024 fMRI)")
    p.add_argument(
        "--rounds", type=positive_int, default=None, help="interleaved rounds (default 5, --quick 2)"
    )
    p.add_argument(
        "--warmup", type=nonnegative_int, default=1, help="untimed steps per variant before the rounds"
    )
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--name", default=NAME, help="result file results/NAME-DEVICE.json")
    args = p.parse_args(argv)
    # the published C packs tensors that require grad into torch.tensor(list): torch warns on every step
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    args.size = args.size or (32 if args.quick else 224)
    args.rounds = args.rounds or (2 if args.quick else 5)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    rows, meta = bench(args)
    meta = {
        "columns": COLUMNS,
        "what": (
            f"one ReAlnet training step, batch {args.batch}, {args.size} px, n_out {args.n_out}, "
            f"beta {BETA:g}, Adam lr {LR:g}; published = code/Train_ReAlnet.ipynb's step (two student "
            "passes, teacher forward with autograd, hard CE target, per-pair Pearson C without gradient); "
            "fastalign = ReAlnet's single forward, precomputed teacher targets, differentiable C"
        ),
        "published_pearson": PUBLISHED_PEARSON,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "timing": "interleaved rounds, one step per variant each; x published = median of per-round ratios",
        "memory": (
            "peak MB: peak memory one step adds after warm-up (CPU: peak resident set growth, VmHWM reset "
            "via /proc/self/clear_refs; CUDA: max_memory_allocated growth); held MB: parameters, buffers, "
            "gradients and Adam state kept between steps (published: student, head and teacher)"
        ),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "wall_s": time.perf_counter() - t0,
        **meta,
    }
    print("load average start/end:", load_start, meta["load_average_at_end"], f"wall {meta['wall_s']:.0f} s")
    for key in ("equal_losses", "equal_losses_convs"):
        if not meta[key]["equal"]:
            print(f"LOSSES DIFFER by more than {TOLERANCE}: {meta[key]}", file=sys.stderr)
            return 1
    if args.quick:
        return 0
    print(f"wrote {harness.save(args.name, args.device, rows, meta)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
