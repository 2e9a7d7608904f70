"""CORnetS.fuse_training: the fused BatchNorm+add+ReLU training path against the eager original."""

from __future__ import annotations

import copy

import pytest
import torch

from fastalign.models import cornet_s
from fastalign.models.cornet import CORnetS

TAPS = ("V1", "V2", "V4", "IT", "decoder")


def _train_step(model: CORnetS, x: torch.Tensor) -> tuple[dict, dict, dict]:
    """Taps of every timestep, parameter gradients, and the state_dict after one SGD step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    feats = model.features(x, layers=TAPS, timesteps="all")
    # gradients reach every tap, as ReAlnet's encoder head does
    loss = feats["decoder.output-t0"].logsumexp(1).sum() + sum(v.square().mean() for v in feats.values())
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    opt.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {k: v.detach() for k, v in feats.items()}, grads, state


@pytest.fixture(scope="module")
def model() -> CORnetS:
    torch.manual_seed(0)
    return cornet_s().train()


def test_reference_backend_is_bitwise_the_original(model: CORnetS) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    want = _train_step(copy.deepcopy(model), x)
    got = _train_step(copy.deepcopy(model).fuse_training("reference"), x)
    for w, g in zip(want, got, strict=True):
        assert w.keys() == g.keys()
        for k in w:
            torch.testing.assert_close(g[k], w[k], rtol=0, atol=0, msg=k)


@pytest.mark.triton
def test_triton_training_step_matches_float64_eager(model: CORnetS, triton_device: str) -> None:
    # 64x64: IT still has 2x2 positions, so its batch statistics are not degenerate
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    exact = _train_step(copy.deepcopy(model).double(), x.double())
    eager = _train_step(copy.deepcopy(model).to(triton_device), x.to(triton_device))
    fused = _train_step(copy.deepcopy(model).to(triton_device).fuse_training("triton"), x.to(triton_device))
    n_stats = 0
    for ex, ea, fu in zip(exact, eager, fused, strict=True):
        assert ex.keys() == fu.keys()
        for k in ex:
            if ex[k].dtype == torch.int64:  # num_batches_tracked
                assert torch.equal(fu[k].cpu(), ex[k]), k
                n_stats += 1
                continue
            scale = float(ex[k].abs().max()) + 1e-12
            err = float((fu[k].double().cpu() - ex[k]).abs().max()) / scale
            err_eager = float((ea[k].double().cpu() - ex[k]).abs().max()) / scale
            # DESIGN's rule for float32: ~1e-5, and never much worse than eager float32 itself
            assert err <= 2 * err_eager + 1e-5, f"{k}: {err:.3g} vs eager float32 {err_eager:.3g}"
    assert n_stats == 2 + 3 * (2 + 4 + 2) + 3  # V1, norm{1,2,3}_t, norm_skip: each counted its batch


@pytest.mark.triton
def test_triton_eval_mode_matches_eager(model: CORnetS, triton_device: str) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)).to(triton_device)
    eager = copy.deepcopy(model).to(triton_device).eval()
    fused = copy.deepcopy(eager).fuse_training("triton")
    with torch.no_grad():
        want = eager.features(x, layers=TAPS, timesteps="all")
        got = fused.features(x, layers=TAPS, timesteps="all")
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-4, msg=k)
    for a, b in zip(eager.state_dict().values(), fused.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.triton
def test_fused_training_compiles_fullgraph(model: CORnetS, triton_device: str) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)).to(triton_device)
    fused = copy.deepcopy(model).to(triton_device).fuse_training("triton")
    compiled_model = copy.deepcopy(fused)
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    want, got = fused(x), compiled(x)
    torch.testing.assert_close(got, want)
    want.square().mean().backward()
    got.square().mean().backward()
    for (k, p), q in zip(fused.named_parameters(), compiled_model.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, k
        torch.testing.assert_close(q.grad, p.grad, msg=k)
    for (k, a), b in zip(fused.state_dict().items(), compiled_model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, msg=k)  # running statistics updated under compile too


def test_fuse_training_keeps_parameters_and_can_be_undone(model: CORnetS) -> None:
    m = copy.deepcopy(model)
    keys = list(m.state_dict())
    assert m.fuse_training() is m
    assert list(m.state_dict()) == keys
    assert {b.norm_backend for b in (m.V1, m.V2, m.V4, m.IT)} == {"auto"}
    m.fuse_training(None)
    assert {b.norm_backend for b in (m.V1, m.V2, m.V4, m.IT)} == {None}
    with pytest.raises(ValueError, match="backend must be None or one of"):
        m.fuse_training("cudnn")


def test_inference_fuse_after_fuse_training(model: CORnetS) -> None:
    m = copy.deepcopy(model).eval().fuse_training()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(m.fuse()(x), m(x), rtol=1e-4, atol=1e-4)
