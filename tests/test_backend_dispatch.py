"""Backend dispatch rules, the compiled extension's loader, and `python -m fastalign.info`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastalign import _backend, _checks, _ext

_FAKE = "fake_never_imported"  # choosing a backend imports nothing


@pytest.fixture
def any_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every backend available for every device, so that only the fake checks below give reasons."""
    monkeypatch.setattr(_backend, "device_reasons", lambda backend, tensors, *, explicit: [])


def _op() -> _backend.Dispatcher:
    d = _backend.Dispatcher("fake_op")
    d.register("cuda", lambda x, *, explicit: ["needs a GPU", "built without CUDA"], module=_FAKE)
    d.register(
        "torch", lambda x, *, explicit: [] if x.dim() == 1 else [f"1-D only, got {x.dim()}-D"], module=_FAKE
    )
    d.register("reference", module=_FAKE, auto=False)
    return d


def test_auto_takes_the_first_backend_that_can_run_and_skips_auto_false(any_device: None) -> None:
    d = _op()
    assert d.choose("auto", torch.zeros(3)) == "torch"
    with pytest.raises(
        NotImplementedError, match=r"cuda: needs a GPU; built without CUDA \| torch: 1-D only"
    ):
        d.choose("auto", torch.zeros(2, 2))  # reference is never chosen by auto


def test_explicit_backend_never_falls_back_and_names_every_reason(any_device: None) -> None:
    d = _op()
    assert d.choose("reference", torch.zeros(2, 2)) == "reference"
    with pytest.raises(NotImplementedError, match="needs a GPU; built without CUDA"):
        d.choose("cuda", torch.zeros(3))
    with pytest.raises(NotImplementedError, match="does not exist for this op"):
        d.choose("triton", torch.zeros(3))
    with pytest.raises(ValueError, match="backend must be one of"):
        d.choose("fastest", torch.zeros(3))


def test_environment_overrides_auto_only(monkeypatch: pytest.MonkeyPatch, any_device: None) -> None:
    d = _op()
    monkeypatch.setenv(_backend.ENV_VAR, "reference")
    assert d.choose("auto", torch.zeros(3)) == "reference"
    assert d.choose("torch", torch.zeros(3)) == "torch"
    monkeypatch.setenv(_backend.ENV_VAR, "cuda")  # forced through the env: an explicit request, so it raises
    with pytest.raises(NotImplementedError, match="needs a GPU"):
        d.choose("auto", torch.zeros(3))


def test_inputs_requiring_grad_never_reach_a_backend_without_autograd(
    monkeypatch: pytest.MonkeyPatch, any_device: None
) -> None:
    d = _backend.Dispatcher("fake_grad_op")
    d.register("cpp", module=_FAKE, differentiable=False)
    d.register("torch", module=_FAKE)
    leaf = torch.zeros(3, requires_grad=True)
    assert d.choose("auto", torch.zeros(3)) == "cpp"
    assert d.choose("auto", leaf) == "torch"  # auto passes over cpp
    assert d.choose("auto", leaf.detach()) == "cpp"
    with torch.no_grad():
        assert d.choose("auto", leaf) == "cpp" and d.choose("cpp", leaf) == "cpp"
    with pytest.raises(NotImplementedError, match="backend 'cpp' cannot run: it has no autograd support"):
        d.choose("cpp", leaf)
    only = _backend.Dispatcher("fake_grad_only_op")
    only.register("cpp", lambda x, *, explicit, y: [], module=_FAKE, differentiable=False)
    with pytest.raises(NotImplementedError, match=r"no backend can run these inputs \(cpp: it has no auto"):
        only.choose("auto", torch.zeros(3), y=leaf)  # keyword tensors count too
    monkeypatch.setenv(_backend.ENV_VAR, "cpp")  # forced through the env: explicit, so it raises too
    with pytest.raises(NotImplementedError, match="no autograd support"):
        d.choose("auto", leaf)


def test_register_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="backend name"):
        _backend.Dispatcher("x").register("auto", module=_FAKE)


def test_a_registered_module_is_imported_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fake_backend_mod.py").write_text("def run(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_backend_mod", raising=False)
    d = _backend.Dispatcher("fake_module_op")
    d.register("torch", module="fake_backend_mod")
    assert d.choose("auto", torch.zeros(2)) == "torch"
    assert "fake_backend_mod" not in sys.modules  # registering and choosing import nothing
    assert d.module("torch").run(1) == 2
    assert "fake_backend_mod" in sys.modules
    with pytest.raises(ValueError, match=r"backend 'cpp' is not registered; it has \['torch'\]"):
        d.module("cpp")


def test_module_registrations_gather_device_dtype_ops_and_own_reasons_in_order() -> None:
    d = _backend.Dispatcher("fake_reasons_op")
    d.register(
        "cuda",
        module=_FAKE,
        dtypes=(torch.float32,),
        check=lambda *args, explicit: ["no kernel for this method"],
    )
    d.register("cpp", module=_FAKE, ops=("rsa_rank", "no_such_op_a", "no_such_op_b"))
    d.register("triton", module=_FAKE, dtypes=_checks.TRITON_DTYPES)
    x = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(NotImplementedError) as info:
        d.choose("cuda", x)
    cuda = str(info.value).split("cannot run: ")[1].split("; ")
    assert any("needs CUDA tensors" in r for r in cuda[:-2]), cuda  # device first, then dtype, then own
    assert cuda[-2:] == ["cuda takes float32 inputs, got torch.float64", "no kernel for this method"]
    with pytest.raises(NotImplementedError, match=r"built without the ops no_such_op_a, no_such_op_b \("):
        d.choose("cpp", x)
    with pytest.raises(
        NotImplementedError, match=r"cpp: .*no_such_op_a.* \| triton: .*float32, bfloat16 or float16"
    ):
        d.choose("auto", x)
    d.register("torch", module=_FAKE)
    assert d.choose("auto", x) == "torch"


def test_module_registrations_keep_the_gradient_rule() -> None:
    d = _backend.Dispatcher("fake_module_grad_op")
    d.register("cpp", module=_FAKE, differentiable=False)
    d.register("torch", module=_FAKE)
    leaf = torch.zeros(3, requires_grad=True)
    assert d.choose("auto", leaf.detach()) == "cpp"
    assert d.choose("auto", leaf) == "torch"
    with pytest.raises(NotImplementedError, match="no autograd support"):
        d.choose("cpp", leaf)


def test_why_ops_missing_names_every_missing_op() -> None:
    assert _ext.why_ops_missing(["rsa_rank", "rsa_centered_ranks"]) is None
    why = _ext.why_ops_missing(["rsa_rank", "nope_1", "nope_2"])
    assert why is not None and "without the ops nope_1, nope_2 (" in why and "rsa_rank" not in why
    if not _ext.build_info()["cuda"]:
        assert "without CUDA kernels" in str(_ext.why_ops_missing(["rsa_rank"], cuda=True))


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


def test_info_reports_versions_backends_and_ops(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fastalign.info"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert f"torch     {torch.__version__}" in out
    from fastalign import _ext
    from fastalign.train.precision import native_bf16

    cpu = next(line for line in out.splitlines() if line.startswith("cpu       "))
    assert torch.backends.cpu.get_cpu_capability() in cpu
    assert ("bf16 native" if native_bf16(torch.device("cpu")) else "bf16 not native") in cpu
    if _ext.build_info():  # the torch the extension was compiled against, beside the one running
        assert f"built against torch {_ext.build_info()['torch_version']}" in out
    for backend in ("reference", "torch", "triton", "cpp", "cuda"):
        assert f"  {backend} " in out
    assert "infonce_loss" in out and "triton, torch, reference" in out


def test_info_names_the_ops_an_older_extension_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastalign import info

    d = _backend.Dispatcher("fake_info_op")
    d.register("cpp", module=_FAKE, ops=("rsa_rank", "no_such_op"))
    d.register("torch", module=_FAKE, ops=())
    monkeypatch.setitem(_backend.REGISTRY, "fake_info_op", d)
    lines = [line for line in info.report().splitlines() if "no_such_op" in line]
    assert (
        len(lines) == 1
        and "cpp cannot run it: fastalign._C was built without the ops no_such_op (" in lines[0]
    )
