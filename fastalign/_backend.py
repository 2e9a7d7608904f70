"""Backend choice for every public op.

Each op family registers its backends in auto's order of preference, each naming the module that
implements it, which is imported on first use (so Triton and the compiled extension cost nothing until
chosen). A new backend is one file and one line; every backend module of an op offers the same names::

    _dispatch = _backend.dispatcher("infonce_loss")
    _dispatch.register("triton", module="fastalign.contrastive.triton", dtypes=_checks.TRITON_DTYPES)
    _dispatch.register("torch", module="fastalign.contrastive.torch_chunked")
    _dispatch.register("reference", module="fastalign.contrastive.reference", auto=False)
    # a compiled kernel without a backward, with limits of its own:
    # register("cpp", module="fastalign.rsa.cpp", check=_cpp_limits, ops=("rsa_rank",), differentiable=False)

    chosen = _dispatch.choose(backend, x, y)     # the arguments the checks look at
    _dispatch.module(chosen).infonce(x, y, ...)

The reasons a backend cannot run some inputs, gathered in this order: what :func:`device_reasons` says
of the tensor arguments (is the backend available in this process, does it take their devices); each
dtype of a tensor argument outside ``dtypes``; the ``ops`` that fastalign._C lacks; then the op's own
limits, ``check(*args, explicit=bool, **kwargs)`` (methods without a kernel, sizes). ``auto`` takes the
first registered backend that auto may pick and that has no reason; an explicit request with a reason
raises ``NotImplementedError`` naming every reason, never falling back. ``FASTALIGN_BACKEND`` overrides
``auto`` for every op that has the named backend.

Gradients follow one rule: a backend registered with ``differentiable=False`` (a compiled kernel without a
backward) cannot run while grad mode is on and a tensor argument requires grad, so ``auto`` passes over it
and an explicit request for it raises. Its output would otherwise either drop the gradient silently or
claim one that autograd cannot compute. Ops whose result is piecewise constant in an input (ranks) detach
that input before dispatch: their gradient is zero almost everywhere, so any backend may run them.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import torch

from fastalign import _checks, _ext

BackendName = Literal["auto", "reference", "torch", "triton", "cuda", "cpp"]
BACKENDS: tuple[str, ...] = ("auto", "reference", "torch", "triton", "cuda", "cpp")
ENV_VAR = "FASTALIGN_BACKEND"

Check = Callable[..., list[str]]


def triton_interpret() -> bool:
    """Whether Triton kernels run on CPU tensors through the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


@functools.cache
def triton_import_error() -> str | None:
    """None when triton imports, else why not."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc}); pip install 'fastalign[triton]'"
    return None


def global_status() -> dict[str, tuple[bool, str]]:
    """Whether each backend can run at all in this process (ignoring input-specific limits), and why not."""
    ext_err = _ext.why_unavailable()
    info = _ext.build_info()
    cuda_dev = torch.cuda.is_available()
    status: dict[str, tuple[bool, str]] = {
        "reference": (True, "pure PyTorch, any device"),
        "torch": (True, "pure PyTorch, any device"),
    }
    t_err = triton_import_error()
    if t_err is not None:
        status["triton"] = (False, t_err)
    elif cuda_dev:
        status["triton"] = (True, "CUDA device present")
    elif triton_interpret():
        status["triton"] = (True, "no GPU: CPU tensors through the Triton interpreter (TRITON_INTERPRET=1)")
    else:
        status["triton"] = (False, "no CUDA device (set TRITON_INTERPRET=1 to interpret kernels on CPU)")
    status["cpp"] = (True, "compiled C++/OpenMP extension loaded") if ext_err is None else (False, ext_err)
    if ext_err is not None:
        status["cuda"] = (False, ext_err)
    elif not info.get("cuda", False):
        status["cuda"] = (
            False,
            "fastalign._C was built without CUDA kernels (torch without CUDA, or no nvcc)",
        )
    elif not cuda_dev:
        status["cuda"] = (False, "no CUDA device visible to torch")
    else:
        status["cuda"] = (True, "CUDA kernels built and a CUDA device present")
    return status


def device_reasons(backend: str, tensors: Sequence[torch.Tensor], *, explicit: bool) -> list[str]:
    """Reasons shared by all ops for which ``backend`` cannot take these tensors."""
    if backend in ("reference", "torch"):
        # pure PyTorch runs anywhere; answering before global_status() also keeps torch.compile from
        # breaking the graph on its calls into the compiled extension
        return []
    ok, why = global_status()[backend]
    reasons = [] if ok else [why]
    devices = {t.device.type for t in tensors}
    if backend == "triton":
        if "cpu" in devices:
            if not explicit:
                reasons.append("auto never sends CPU tensors to Triton")
            elif not triton_interpret():
                reasons.append("CPU tensors need TRITON_INTERPRET=1 for the triton backend")
        if devices - {"cpu", "cuda"}:
            reasons.append(f"triton supports cuda tensors, got devices {sorted(devices)}")
    elif backend == "cuda" and devices != {"cuda"}:
        reasons.append(f"the cuda backend needs CUDA tensors, got devices {sorted(devices)}")
    elif backend == "cpp" and devices != {"cpu"}:
        reasons.append(f"the cpp backend needs CPU tensors, got devices {sorted(devices)}")
    return reasons


_NO_AUTOGRAD = (
    "it has no autograd support and an input requires grad (use a differentiable backend, or compute "
    "values only under torch.no_grad() or on detached inputs)"
)


def _needs_grad(*args: Any, **kwargs: Any) -> bool:
    """Whether grad mode is on and a tensor among the arguments requires grad."""
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in (*args, *kwargs.values())
    )


@dataclass
class _Spec:
    name: str
    check: Check | None
    auto: bool
    differentiable: bool
    module: str
    dtypes: tuple[torch.dtype, ...] | None
    ops: tuple[str, ...]

    def reasons(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, explicit: bool, grad: bool
    ) -> list[str]:
        """Why this backend cannot run these inputs, a missing backward included."""
        tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        reasons = device_reasons(self.name, tensors, explicit=explicit)
        if self.dtypes is not None:
            reasons += _checks.dtype_reasons(self.name, self.dtypes, tensors)
        # a backend unavailable as a whole has said why already; else name the ops it lacks
        if self.ops and global_status()[self.name][0]:
            why = _ext.why_ops_missing(self.ops)
            reasons += [why] if why else []
        if self.check is not None:
            reasons += self.check(*args, explicit=explicit, **kwargs)
        if grad and not self.differentiable:
            reasons.append(_NO_AUTOGRAD)
        return reasons


@dataclass
class Dispatcher:
    """The backends of one op, in order of preference for ``auto``."""

    op: str
    specs: dict[str, _Spec] = field(default_factory=dict)
    _modules: dict[str, ModuleType] = field(default_factory=dict, repr=False)

    def register(
        self,
        name: str,
        check: Check | None = None,
        *,
        module: str,
        dtypes: Sequence[torch.dtype] | None = None,
        ops: Sequence[str] = (),
        auto: bool = True,
        differentiable: bool = True,
    ) -> None:
        """Adds backend ``name``, implemented by ``module`` (see the module docstring).

        Args:
            name: one of ``BACKENDS`` other than "auto".
            check: ``check(*args, explicit=bool, **kw)`` returns the op's own reasons the backend cannot
                run these inputs (None: it has none).
            module: dotted name of the module implementing the backend, imported by :meth:`module`.
            dtypes: the dtypes it takes in every tensor argument (None: any).
            ops: the ``torch.ops.fastalign`` ops it calls; those fastalign._C lacks are reasons.
            auto: whether ``auto`` may pick it.
            differentiable: whether autograd differentiates its outputs with respect to its tensor inputs
                (False for kernels without a backward: never given inputs that require grad).
        """
        if name not in BACKENDS or name == "auto":
            raise ValueError(f"backend name must be one of {BACKENDS[1:]}, got {name!r}")
        self.specs[name] = _Spec(
            name, check, auto, differentiable, module, None if dtypes is None else tuple(dtypes), tuple(ops)
        )

    def module(self, name: str) -> ModuleType:
        """The module implementing backend ``name``, imported on first use."""
        if name not in self.specs:
            raise ValueError(f"{self.op}: backend {name!r} is not registered; it has {list(self.specs)}")
        module = self._modules.get(name)
        if module is None:
            module = self._modules[name] = importlib.import_module(self.specs[name].module)
        return module

    def choose(self, backend: str, *args: Any, **kwargs: Any) -> str:
        """Returns the backend to run for these inputs (see module docstring)."""
        if backend not in BACKENDS:
            raise ValueError(f"{self.op}: backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            env = os.environ.get(ENV_VAR, "").strip()
            if env and env != "auto":
                if env not in BACKENDS:
                    raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {env!r}")
                if env in self.specs:
                    backend = env
        grad = _needs_grad(*args, **kwargs)
        if backend != "auto":
            if backend not in self.specs:
                raise NotImplementedError(
                    f"{self.op}: backend {backend!r} does not exist for this op; it has {list(self.specs)}"
                )
            reasons = self.specs[backend].reasons(args, kwargs, explicit=True, grad=grad)
            if reasons:
                raise NotImplementedError(f"{self.op}: backend {backend!r} cannot run: " + "; ".join(reasons))
            return backend
        tried = []
        for name, spec in self.specs.items():
            if not spec.auto:
                continue
            reasons = spec.reasons(args, kwargs, explicit=False, grad=grad)
            if not reasons:
                return name
            tried.append(f"{name}: {'; '.join(reasons)}")
        raise NotImplementedError(f"{self.op}: no backend can run these inputs ({' | '.join(tried)})")


REGISTRY: dict[str, Dispatcher] = {}


def dispatcher(op: str) -> Dispatcher:
    """The dispatcher of ``op``, created on first use."""
    return REGISTRY.setdefault(op, Dispatcher(op))
