"""Backend dispatch rules, the compiled extension's loader, and `python -m fastalign.info`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fastalign import _backend, _ext


def _op() -> _backend.Dispatcher:
    d = _backend.Dispatcher("fake_op")
    d.register("cuda", lambda x, *, explicit: ["needs a GPU", "built without CUDA"])
    d.register("torch", lambda x, *, explicit: [] if x.dim() == 1 else [f"1-D only, got {x.dim()}-D"])
    d.register("reference", lambda x, *, explicit: [], auto=False)
    return d


def test_auto_takes_the_first_backend_that_can_run_and_skips_auto_false() -> None:
    d = _op()
    assert d.choose("auto", torch.zeros(3)) == "torch"
    with pytest.raises(
        NotImplementedError, match=r"cuda: needs a GPU; built without CUDA \| torch: 1-D only"
    ):
        d.choose("auto", torch.zeros(2, 2))  # reference is never chosen by auto


def test_explicit_backend_never_falls_back_and_names_every_reason() -> None:
    d = _op()
    assert d.choose("reference", torch.zeros(2, 2)) == "reference"
    with pytest.raises(NotImplementedError, match="needs a GPU; built without CUDA"):
        d.choose("cuda", torch.zeros(3))
    with pytest.raises(NotImplementedError, match="does not exist for this op"):
        d.choose("triton", torch.zeros(3))
    with pytest.raises(ValueError, match="backend must be one of"):
        d.choose("fastest", torch.zeros(3))


def test_environment_overrides_auto_only(monkeypatch: pytest.MonkeyPatch) -> None:
    d = _op()
    monkeypatch.setenv(_backend.ENV_VAR, "reference")
    assert d.choose("auto", torch.zeros(3)) == "reference"
    assert d.choose("torch", torch.zeros(3)) == "torch"
    monkeypatch.setenv(_backend.ENV_VAR, "cuda")  # forced through the env: an explicit request, so it raises
    with pytest.raises(NotImplementedError, match="needs a GPU"):
        d.choose("auto", torch.zeros(3))


def test_inputs_requiring_grad_never_reach_a_backend_without_autograd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = _backend.Dispatcher("fake_grad_op")
    d.register("cpp", lambda x, *, explicit: [], differentiable=False)
    d.register("torch", lambda x, *, explicit: [])
    leaf = torch.zeros(3, requires_grad=True)
    assert d.choose("auto", torch.zeros(3)) == "cpp"
    assert d.choose("auto", leaf) == "torch"  # auto passes over cpp
    assert d.choose("auto", leaf.detach()) == "cpp"
    with torch.no_grad():
        assert d.choose("auto", leaf) == "cpp" and d.choose("cpp", leaf) == "cpp"
    with pytest.raises(NotImplementedError, match="backend 'cpp' cannot run: it has no autograd support"):
        d.choose("cpp", leaf)
    only = _backend.Dispatcher("fake_grad_only_op")
    only.register("cpp", lambda x, *, explicit, y: [], differentiable=False)
    with pytest.raises(NotImplementedError, match=r"no backend can run these inputs \(cpp: it has no auto"):
        only.choose("auto", torch.zeros(3), y=leaf)  # keyword tensors count too
    monkeypatch.setenv(_backend.ENV_VAR, "cpp")  # forced through the env: explicit, so it raises too
    with pytest.raises(NotImplementedError, match="no autograd support"):
        d.choose("auto", leaf)


def test_register_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="backend name"):
        _backend.Dispatcher("x").register("auto", lambda *a, explicit: [])


def test_device_reasons_for_cpu_tensors() -> None:
    t = torch.zeros(2)
    assert any(
        "auto never sends CPU tensors" in r for r in _backend.device_reasons("triton", [t], explicit=False)
    )
    assert any("needs CUDA tensors" in r for r in _backend.device_reasons("cuda", [t], explicit=True))


def test_extension_built_with_openmp() -> None:
    """CI builds fastalign._C; a silent failure to build it must fail here, not just disable backends."""
    assert _ext.why_unavailable() is None, _ext.why_unavailable()
    info = _ext.build_info()
    assert info["openmp"] is True
    if torch.version.cuda is None:
        assert info["cuda"] is False  # no CUDA kernels can exist without a CUDA torch


def test_info_reports_versions_backends_and_ops() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fastalign.info"], capture_output=True, text=True, check=True
    ).stdout
    assert f"torch     {torch.__version__}" in out
    for backend in ("reference", "torch", "triton", "cpp", "cuda"):
        assert f"  {backend} " in out
    assert "infonce_loss" in out and "triton, torch, reference" in out
