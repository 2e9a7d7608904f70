"""ReAlnet's correlation-contrastive loss: validation, dispatch, and its O(B * D) torch backend.

With z_i and w_j the centred, unit-norm rows of pred and target (``reference.centred_unit_rows``), the
Pearson matrix is ``R = Z @ W.T``, so its trace is ``sum_i <z_i, w_i>`` and the sum of all its entries
is ``<sum_i z_i, sum_j w_j>``: the loss needs neither R nor any B x B tensor, only a few passes over the
(B, D) inputs. The reference backend builds R explicitly (``reference.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from fastalign import _backend, _checks
from fastalign.contrastive.reference import centred_unit_rows, correlation_contrastive_loss_reference

_FN = "correlation_contrastive_loss"

# a backend module other than the reference offers correlation_contrastive(pred, target)
_dispatch = _backend.dispatcher(_FN)
_dispatch.register("torch", module="fastalign.contrastive.correlation")
_dispatch.register("reference", module="fastalign.contrastive.reference", auto=False)


def correlation_contrastive(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss in O(B * D) time and memory, computed in float32 (float64 if an input is float64).

    Args:
        pred: (B, D) floating tensor, B >= 2, D >= 2.
        target: (B, D) floating tensor on pred's device; its dtype may differ from pred's.

    Returns:
        0-dim tensor of the compute dtype (NaN where a row is constant or not finite). Differentiable.
    """
    dtype = torch.promote_types(_checks.compute_dtype(pred), _checks.compute_dtype(target))
    z, w = centred_unit_rows(pred.to(dtype)), centred_unit_rows(target.to(dtype))
    b = z.shape[0]
    trace = torch.linalg.vecdot(z, w).sum()
    total = torch.dot(z.sum(dim=0), w.sum(dim=0))
    return 1 - trace / b + (total - trace) / (b * (b - 1))


def _validate(pred: Any, target: Any, detach: Any, grouped: bool) -> None:
    """Checks the arguments; ``grouped``: B >= 2 is checked over the group's ranks later."""
    for name, t in (("pred", pred), ("target", target)):
        _checks.check_tensor(_FN, name, t, shape="(B, D)")
        _checks.check_floating(
            _FN, name, t, expected="a floating-point tensor (float16, bfloat16, float32 or float64)"
        )
        _checks.check_shape(_FN, name, t, (None, None), doc="(B, D)")
    if target.shape != pred.shape:
        raise ValueError(
            f"{_FN}: target must have pred's shape {tuple(pred.shape)}, got {tuple(target.shape)}"
        )
    b, d = pred.shape
    if b < 2 and not grouped:
        raise ValueError(
            f"{_FN}: pred and target must have at least 2 rows (B >= 2; the mean of r(pred_i, target_j) "
            f"over i != j is undefined for a single row), got shape {tuple(pred.shape)}"
        )
    if d < 2:
        raise ValueError(
            f"{_FN}: pred and target must have at least 2 columns (D >= 2; the Pearson correlation of "
            f"a single value is undefined), got shape {tuple(pred.shape)}"
        )
    _checks.check_same_device(_FN, pred=pred, target=target)
    _checks.check_bool(_FN, "detach", detach)


def _rows(mask: torch.Tensor) -> str:
    """'row 3' or 'rows 3, 8, 11, ... (7 rows)' for the True entries of a (B,) mask."""
    rows = mask.nonzero().flatten().tolist()
    if len(rows) == 1:
        return f"row {rows[0]}"
    shown = ", ".join(map(str, rows[:3])) + (", ..." if len(rows) > 3 else "")
    return f"rows {shown} ({len(rows)} rows)"


def _bad_rows(pred: torch.Tensor, target: torch.Tensor) -> str:
    """Why the loss of these inputs is undefined: their rows holding NaN or inf, or of zero variance."""
    problems = []
    for name, t in (("pred", pred.detach()), ("target", target.detach())):
        finite = torch.isfinite(t).all(dim=1)
        if not bool(finite.all()):
            problems.append(f"{name} must be finite, got NaN or inf in {_rows(~finite)}")
            continue
        low, high = torch.aminmax(t, dim=1)
        constant = low == high
        if bool(constant.any()):
            first = int(constant.nonzero()[0])
            which = "" if int(constant.sum()) == 1 else f"row {first}: "
            problems.append(
                f"every row of {name} must vary (Pearson correlation is undefined for zero variance), "
                f"got {_rows(constant)} constant ({which}every value {float(low[first])!r})"
            )
    return "; ".join(problems)


def _gathered(pred: torch.Tensor, target: torch.Tensor, group: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """pred and target of every rank of ``group``, concatenated in rank order; backward sums each row's
    gradient over the ranks and hands this rank's rows theirs."""
    import torch.distributed as dist

    from fastalign.contrastive.distributed import _GatherWithGrad, _sizes

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"{_FN}: group was given but torch.distributed is not initialised")
    sizes = _sizes(pred.shape[0], pred.device, group)
    if sum(sizes) < 2:  # every rank sees the same sizes, so every rank raises
        raise ValueError(
            f"{_FN}: pred and target must have at least 2 rows over the group's ranks (B >= 2; the mean of "
            f"r(pred_i, target_j) over i != j is undefined for a single row), got {sizes} rows per rank"
        )
    offset = sum(sizes[: dist.get_rank(group)])
    gathered = [_GatherWithGrad.apply(t, sizes, offset, group) for t in (pred, target)]
    return gathered[0], gathered[1]


def correlation_contrastive_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    detach: bool = False,
    backend: str = "auto",
    group: Any = None,
) -> torch.Tensor:
    """ReAlnet's correlation-contrastive loss over a batch, differentiable.

    ``C = 1 - mean_i r(pred_i, target_i) + mean_{i != j} r(pred_i, target_j)`` with r the Pearson
    correlation of two rows over D: matched pairs are pulled towards r = 1, mismatched pairs towards
    r = -1 (C is in [-1, 3]; about 1 for unrelated rows, 0 when matched pairs correlate perfectly and
    mismatched ones not at all). The "torch" backend never forms the B x B correlation matrix
    (O(B * D) time and memory).

    The published ReAlnet code builds C with ``torch.tensor(list)``, so C gives no gradient there;
    ``detach=True`` reproduces that (the same value, no gradient). ReAlnet.py's Spearman variant is
    this loss of the rows' ranks (``fastalign.rank(x, dim=1)``), which carry no gradient either.

    Checking the loss costs one device sync: a NaN loss means an input row holds NaN or inf or is
    constant (zero variance), and raises ValueError naming the argument and rows. Under torch.compile
    the check is skipped and such inputs give a NaN loss.

    Under data parallelism each process holds a share of the batch, and C over a share is not C over
    the batch (its mean over pairs i != j misses the pairs across processes). With ``group`` every rank
    passes its own rows and gets C over the rows of all ranks (concatenated in rank order; each rank the
    same value). Backward sums the gradients over the ranks: when every rank minimises the same C, each
    row receives ``world_size`` times the single-process gradient of C over the whole batch, which
    DistributedDataParallel's averaging over ranks turns into the single-process parameter gradient, as
    for a loss that is a mean over each rank's samples. Train with the same loss on every rank.

    Args:
        pred: (B, D) floating tensor (e.g. predicted EEG), B >= 2 rows (with ``group``: over all ranks),
            D >= 2 values per row.
        target: (B, D) floating tensor on pred's device (e.g. recorded EEG); dtypes may differ.
        detach: return the value without a gradient, as the published code does.
        backend: "auto" (= "torch"), "torch" or "reference" (the explicit B x B matrix, in the inputs'
            promoted dtype).
        group: a torch.distributed process group (e.g. ``torch.distributed.group.WORLD``), or None. A
            collective: every rank of the group calls it, with its own rows (any number, B >= 2 over the
            ranks; D the same on every rank). Rows are gathered in the backend's compute dtype.

    Returns:
        0-dim tensor, float64 if an input is float64 else float32 (float16 and bfloat16 inputs are
        standardised and summed in float32; autocast is switched off inside). The reference backend
        returns the inputs' promoted dtype.

    Raises:
        TypeError: pred or target not a floating tensor, or detach not a bool.
        ValueError: shapes that differ or are not (B, D) with B >= 2 and D >= 2, two devices, rows
            holding NaN or inf or of zero variance (with ``group``: on every rank, rows numbered in the
            gathered batch), or ``group`` without an initialised process group.
        NotImplementedError: a backend that cannot run these inputs.
    """
    _validate(pred, target, detach, group is not None)
    if detach:
        pred, target = pred.detach(), target.detach()
    chosen = _dispatch.choose(backend, pred, target)
    if chosen == "reference":
        dtype = torch.promote_types(pred.dtype, target.dtype)
    else:
        dtype = torch.promote_types(_checks.compute_dtype(pred), _checks.compute_dtype(target))
    # each backend keeps its documented precision: autocast would lower the reference's
    with torch.autocast(pred.device.type, enabled=False):
        pred, target = pred.to(dtype), target.to(dtype)
        if group is not None:
            pred, target = _gathered(pred, target, group)
        if chosen == "reference":
            loss = correlation_contrastive_loss_reference(pred, target)
        else:
            # the torch backend is this module: a direct call, which torch.compile traces (importlib not)
            loss = correlation_contrastive(pred, target)
    # a traced graph cannot branch on a value: compiled callers get the NaN. With a group every rank holds
    # the same rows and loss, so every rank raises.
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(loss)):
        where = (
            " (rows of the batch gathered over the group's ranks, in rank order)" if group is not None else ""
        )
        raise ValueError(f"{_FN}: {_bad_rows(pred, target) or _unexplained(loss)}{where}")
    return loss


def _unexplained(loss: torch.Tensor) -> str:
    """The message for a non-finite loss whose inputs are finite with varying rows (a bug: say so)."""
    return (
        f"the loss is {float(loss.detach())} although pred and target are finite and no row is constant; "
        "please report this as a fastalign bug, with the inputs"
    )
