"""Gradients of the RSA ops.

Every differentiable op passes torch.autograd.gradcheck (float64) on every backend that has a backward
(reference, torch); the compiled kernels and Triton have none, so auto passes over them when an input
requires grad and asking for them raises; ranks, rank statistics and the permutation tests are piecewise
constant or counts, so their outputs claim no gradient on any backend.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.autograd import gradcheck

import fastalign as fa
from fastalign import _checks, _ext
from fastalign.rsa import api, torch_chunked

CPP = ["cpp"] if _ext.why_ops_missing(api._CPP_OPS) is None else []
DIFFERENTIABLE = ["reference", "torch"]
RANK_METHODS = ["spearman", "rho_a", "kendall_tau_a"]


def _leaf(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()


def _check(fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]], *inputs: torch.Tensor) -> None:
    """gradcheck's fast mode: vJu for random u, v against finite differences (a wrong Jacobian fails
    with probability 1) in two evaluations instead of one per input element."""
    assert gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("backend", DIFFERENTIABLE)
@pytest.mark.parametrize("method", ["correlation", "cosine", "euclidean", "crossnobis"])
def test_rdm(method: str, backend: str) -> None:
    x = _leaf(3, 2, 4, 3) if method == "crossnobis" else _leaf(2, 4, 3)
    _check(lambda x: fa.rdm(x, method, backend=backend), x)


@pytest.mark.parametrize("backend", DIFFERENTIABLE)
def test_crossnobis_noise(backend: str) -> None:
    noise = (torch.eye(3, dtype=torch.float64) + 0.1).requires_grad_()
    _check(lambda x, n: fa.rdm(x, "crossnobis", noise=n, backend=backend), _leaf(2, 4, 3), noise)


@pytest.mark.parametrize("method", ["correlation", "cosine", "euclidean", "crossnobis"])
def test_torch_rdm_across_feature_chunks_and_reused_gram_buffers(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several feature chunks, pair blocks and RDM batches through one reused Gram buffer."""
    monkeypatch.setattr(torch_chunked, "_CHUNK_ELEMENTS", 7)
    monkeypatch.setattr(torch_chunked, "_PAIRS_PER_BLOCK", 3)
    monkeypatch.setattr(torch_chunked, "_GRAM_ELEMENTS", 20)
    x = _leaf(2, 3, 4, 5) if method == "crossnobis" else _leaf(3, 4, 5)
    _check(lambda x: fa.rdm(x, method, backend="torch"), x)


@pytest.mark.parametrize("backend", DIFFERENTIABLE)
@pytest.mark.parametrize(("method", "exponent", "back"), [("correlation", 600, 0), ("euclidean", -500, 1000)])
def test_rdm_through_the_power_of_two_rescaling(
    method: str, exponent: int, back: int, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs near 1e180 / 1e-150 are rescaled before the kernel; the gradient flows through that."""
    calls = []
    pow2 = _checks.pow2
    monkeypatch.setattr(_checks, "pow2", lambda k, dtype: calls.append(k) or pow2(k, dtype))
    _check(lambda x: fa.rdm(x * 2.0**exponent, method, backend=backend) * 2.0**back, _leaf(4, 3))
    assert calls  # the rescaling ran


@pytest.mark.parametrize("backend", DIFFERENTIABLE)
def test_time_resolved_rdms(backend: str) -> None:
    _check(lambda d: fa.time_resolved_rdms(d, "correlation", window=2, backend=backend), _leaf(4, 2, 3))


@pytest.mark.parametrize("backend", DIFFERENTIABLE)
@pytest.mark.parametrize("method", ["pearson", "cosine"])
def test_compare_rdms(method: str, backend: str) -> None:
    a, b = _leaf(2, 1, 6), _leaf(1, 3, 6, seed=1)
    _check(lambda a, b: fa.compare_rdms(a, b, method, backend=backend), a, b)


@pytest.mark.parametrize("backend", ["auto", *DIFFERENTIABLE])
@pytest.mark.parametrize(("method", "rdm_method"), [("pearson", "correlation"), ("cosine", "euclidean")])
def test_time_resolved_rsa(method: str, rdm_method: str, backend: str) -> None:
    """auto must leave the fused cpp kernel (no backward) for the composed path."""
    _check(
        lambda d, m: fa.time_resolved_rsa(d, m, method, rdm_method=rdm_method, window=2, backend=backend),
        _leaf(5, 2, 3),
        _leaf(2, 10, seed=1),
    )


@pytest.mark.parametrize("backend", DIFFERENTIABLE)
@pytest.mark.parametrize("method", ["pearson", "cosine"])
def test_noise_ceiling(method: str, backend: str) -> None:
    _check(lambda r: fa.noise_ceiling(r, method, backend=backend), _leaf(3, 2, 6))


def test_auto_sends_inputs_that_require_grad_to_torch() -> None:
    """On CPU, auto used to pick cpp for few features: its output claimed a gradient and x.grad stayed
    None; now the gradient is the reference's."""
    x = _leaf(6, 4)
    fa.rdm(x).sum().backward()
    ref = x.detach().clone().requires_grad_()
    fa.rdm(ref, backend="reference").sum().backward()
    assert x.grad is not None and ref.grad is not None
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # values only: the fast kernels again
        assert api._rdm_dispatch.choose("auto", x, "correlation") == ("cpp" if CPP else "torch")


@pytest.mark.skipif(not CPP, reason="fastalign._C without the RSA ops")
def test_explicit_backends_without_backward_raise() -> None:
    x = _leaf(6, 4)
    with pytest.raises(NotImplementedError, match="rdm: backend 'cpp' cannot run: it has no autograd"):
        fa.rdm(x, backend="cpp")
    with pytest.raises(NotImplementedError, match=r"compare_rdms: backend 'cpp' .* no autograd"):
        fa.compare_rdms(_leaf(15), _leaf(15, seed=1), "pearson", backend="cpp")
    with pytest.raises(NotImplementedError, match=r"time_resolved_rsa: backend 'cpp' .* no autograd"):
        fa.time_resolved_rsa(_leaf(6, 2, 3), _leaf(15, seed=1), "cosine", backend="cpp")
    with pytest.raises(NotImplementedError, match=r"noise_ceiling: backend 'cpp' .* no autograd"):
        fa.noise_ceiling(_leaf(3, 15), "pearson", backend="cpp")
    with torch.no_grad():
        assert not fa.rdm(x, backend="cpp").requires_grad


def test_triton_claims_no_backward() -> None:
    with pytest.raises(NotImplementedError, match="no autograd"):
        fa.rdm(_leaf(6, 4).float(), backend="triton")


@pytest.mark.parametrize("backend", ["auto", "reference", "torch", *CPP])
def test_piecewise_constant_outputs_claim_no_gradient(backend: str) -> None:
    """Ranks and rank statistics have zero gradient almost everywhere: every backend runs them (the
    inputs are detached) and no output requires grad."""
    a, b = _leaf(2, 15), _leaf(15, seed=1)
    assert not fa.rank(a, backend=backend).requires_grad
    for method in RANK_METHODS:
        assert not fa.compare_rdms(a, b, method, backend=backend).requires_grad
        bounds = fa.noise_ceiling(torch.stack([a[0], b, a[1]]), method, backend=backend)
        assert not any(t.requires_grad for t in bounds)
        if method != "kendall_tau_a":  # which the fused cpp kernel does not run
            assert not fa.time_resolved_rsa(_leaf(6, 2, 3), b, method, backend=backend).requires_grad
    res = fa.rsa_permutation_test(a, b, method="pearson", n_permutations=5, seed=0, return_null=True,
                                  backend=backend)  # fmt: skip
    assert res.null is not None
    assert not (res.statistic.requires_grad or res.pvalue.requires_grad or res.null.requires_grad)
    if backend in ("auto", "reference", "torch"):
        clusters = fa.cluster_permutation_test(_leaf(4, 6), n_permutations=5, seed=0, backend=backend)
        assert not (clusters.t_values.requires_grad or clusters.null.requires_grad)
