"""CORnet-S eager module: architecture, parameter names, checkpoint loading, feature taps.

The oracle is an independent functional CORnet-S written from the original's description with
F.conv2d/F.batch_norm on the raw state_dict, run in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastalign.models import CORnetS, cornet_s
from fastalign.models.cornet import CORblockS, CORnetBase

TIMES = {"V2": 2, "V4": 4, "IT": 2}
CHANNELS = {"V2": (64, 128), "V4": (128, 256), "IT": (256, 512)}


def _bn(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str, training: bool) -> torch.Tensor:
    # Fresh copies of the running stats: the oracle must not change the caller's state_dict.
    rm, rv = sd[f"{name}.running_mean"].clone(), sd[f"{name}.running_var"].clone()
    return F.batch_norm(x, rm, rv, sd[f"{name}.weight"], sd[f"{name}.bias"], training, 0.1, 1e-5)


def functional_cornet(
    sd: dict[str, torch.Tensor], x: torch.Tensor, training: bool = False
) -> dict[str, torch.Tensor]:
    """Brain-Score-named activations plus "logits" of CORnet-S, straight from the original's description."""
    out = {}
    h = F.conv2d(x, sd["V1.conv1.weight"], stride=2, padding=3)
    h = F.relu(_bn(h, sd, "V1.norm1", training))
    h = F.max_pool2d(h, 3, 2, 1)
    h = F.relu(_bn(F.conv2d(h, sd["V1.conv2.weight"], padding=1), sd, "V1.norm2", training))
    out["V1.output-t0"] = h
    for region, times in TIMES.items():
        p = region + "."
        x_in = F.conv2d(h, sd[p + "conv_input.weight"])
        cur = x_in
        for t in range(times):
            if t == 0:
                skip = _bn(F.conv2d(cur, sd[p + "skip.weight"], stride=2), sd, p + "norm_skip", training)
            else:
                skip = cur
            y = F.relu(_bn(F.conv2d(cur, sd[p + "conv1.weight"]), sd, f"{p}norm1_{t}", training))
            y = F.conv2d(y, sd[p + "conv2.weight"], stride=2 if t == 0 else 1, padding=1)
            y = F.relu(_bn(y, sd, f"{p}norm2_{t}", training))
            y = _bn(F.conv2d(y, sd[p + "conv3.weight"]), sd, f"{p}norm3_{t}", training)
            cur = F.relu(y + skip)
            out[f"{region}.output-t{t}"] = cur
        h = cur
    pooled = h.mean(dim=(2, 3), keepdim=True)
    out["decoder.avgpool-t0"] = pooled
    out["logits"] = F.linear(pooled.flatten(1), sd["decoder.linear.weight"], sd["decoder.linear.bias"])
    return out


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so that folding and loading are tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)


# V2, V4 and IT (in, out) channels of the narrow CORnet-S (the real one's: CHANNELS)
NARROW = {"V2": (64, 16), "V4": (16, 32), "IT": (32, 64)}


def _narrow_cornet_s(seed: int) -> CORnetS:
    """A CORnet-S whose V2, V4 and IT blocks are an eighth as wide: the same classes and forward code (what
    fullgraph compiles, what the feature taps run) with 0.9 M weights instead of 53 M, whose memory traffic
    is what a CPU forward and backward pass of the real width spends its seconds on."""
    torch.manual_seed(seed)
    net = CORnetS(num_classes=10)
    net.V2, net.V4, net.IT = (CORblockS(c_in, c_out, times=TIMES[r]) for r, (c_in, c_out) in NARROW.items())
    net.decoder.linear = torch.nn.Linear(NARROW["IT"][1], 10)
    randomize_bn(net, seed)
    return net


@pytest.fixture(scope="module")
def model() -> CORnetS:
    torch.manual_seed(0)
    m = cornet_s()
    randomize_bn(m)
    return m.eval()


def expected_keys() -> set[str]:
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"V1.conv1.weight", "V1.conv2.weight", "decoder.linear.weight", "decoder.linear.bias"}
    keys |= {f"V1.{n}.{s}" for n in ("norm1", "norm2") for s in bn}
    for region, times in TIMES.items():
        keys |= {f"{region}.{c}.weight" for c in ("conv_input", "skip", "conv1", "conv2", "conv3")}
        keys |= {f"{region}.norm_skip.{s}" for s in bn}
        keys |= {f"{region}.norm{i}_{t}.{s}" for i in (1, 2, 3) for t in range(times) for s in bn}
    return keys


def test_parameter_count_and_shapes(model: CORnetS) -> None:
    assert sum(p.numel() for p in model.parameters()) == 53_416_616
    sd = model.state_dict()
    assert set(sd) == expected_keys()
    assert sd["V1.conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["V2.conv_input.weight"].shape == (128, 64, 1, 1)
    assert sd["V4.conv2.weight"].shape == (1024, 1024, 3, 3)
    assert sd["IT.skip.weight"].shape == (512, 512, 1, 1)
    assert sd["V4.norm3_3.running_mean"].shape == (256,)
    assert sd["decoder.linear.weight"].shape == (1000, 512)
    assert not any(n.endswith("bias") and "conv" in n for n in sd)


def test_initialisation_follows_original() -> None:
    torch.manual_seed(1)
    m = cornet_s()
    w = m.V4.conv2.weight
    assert abs(w.std().item() - math.sqrt(2.0 / (9 * 1024))) < 0.02 * math.sqrt(2.0 / (9 * 1024))
    assert torch.all(m.V2.norm1_1.weight == 1) and torch.all(m.V2.norm1_1.bias == 0)
    assert m.training


@pytest.mark.parametrize("training", [False, True])
def test_matches_functional_oracle(model: CORnetS, training: bool) -> None:
    m64 = CORnetS().double()
    m64.load_state_dict(model.state_dict())
    m64.train(training)
    sd = {k: v.clone() for k, v in m64.state_dict().items()}
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref = functional_cornet(sd, x, training)
    got = m64.features(x, layers=("V1", "V2", "V4", "IT", "avgpool", "decoder"), timesteps="all")
    logits = got.pop("decoder.output-t0")
    assert set(got) == set(ref) - {"logits"}
    for k in got:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=1e-10, msg=k)
    torch.testing.assert_close(logits, ref["logits"], rtol=1e-10, atol=1e-10)
    if training:
        # One training forward moves every running mean by momentum * (batch mean - running mean).
        before, after = sd["V4.norm2_3.running_mean"], m64.state_dict()["V4.norm2_3.running_mean"]
        assert not torch.equal(before, after)
        assert int(m64.state_dict()["V4.norm2_3.num_batches_tracked"]) == 1


def test_forward_equals_decoder_tap(model: CORnetS) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x, layers=("decoder", "avgpool"))
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(feats["decoder"], logits, rtol=0, atol=0)
    assert feats["avgpool"].shape == (2, 512, 1, 1)


def test_layer_names_brain_score(model: CORnetS) -> None:
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = model.features(x, timesteps="all")
        last = model.features(x, timesteps="last")
    names = ["V1.output-t0", "V2.output-t0", "V2.output-t1"]
    names += [f"V4.output-t{t}" for t in range(4)] + ["IT.output-t0", "IT.output-t1", "decoder.avgpool-t0"]
    assert list(feats) == names == CORnetBase.layer_names()
    assert list(last) == ["V1", "V2", "V4", "IT", "avgpool"]
    for region, bs in (("V2", "V2.output-t1"), ("V4", "V4.output-t3"), ("IT", "IT.output-t1")):
        torch.testing.assert_close(last[region], feats[bs], rtol=0, atol=0)
    assert feats["V4.output-t0"].shape == (1, 256, 2, 2)
    # Aliases with Brain-Score module names key the result by the name given.
    alias = model.features(x, layers=["V4.output", "decoder.avgpool"])
    torch.testing.assert_close(alias["V4.output"], last["V4"], rtol=0, atol=0)


def test_features_stop_early(model: CORnetS) -> None:
    calls: list[str] = []
    regions = ("V2", "V4", "IT")
    hooks = [getattr(model, r).register_forward_hook(lambda *a, r=r: calls.append(r)) for r in regions]
    try:
        model.features(torch.randn(1, 3, 32, 32), layers=("V1", "V2"))
    finally:
        for h in hooks:
            h.remove()
    assert calls == ["V2"]


def test_gradients_flow_through_taps() -> None:
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    m64 = _narrow_cornet_s(seed=0).double().eval()  # the oracle takes any width; the taps' code is the same
    feats = m64.features(x, layers=("V2", "V4"), timesteps="all")
    loss = feats["V4.output-t2"].square().sum() + feats["V2.output-t0"].sum()
    (gx,) = torch.autograd.grad(loss, x)
    x2 = x.detach().clone().requires_grad_(True)
    ref = functional_cornet({k: v.clone() for k, v in m64.state_dict().items()}, x2)
    (gref,) = torch.autograd.grad(ref["V4.output-t2"].square().sum() + ref["V2.output-t0"].sum(), x2)
    assert gx.abs().max() > 0
    torch.testing.assert_close(gx, gref, rtol=1e-9, atol=1e-12)
    # Parameters of the taps' regions get gradients; later regions are not run.
    loss2 = m64.features(x.detach(), layers="V4")["V4"].sum()
    loss2.backward()
    assert m64.V4.conv2.weight.grad is not None and m64.V4.norm2_3.weight.grad.abs().sum() > 0
    assert m64.IT.conv2.weight.grad is None


def test_bad_feature_arguments(model: CORnetS) -> None:
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="timesteps"):
        model.features(x, timesteps="first")
    with pytest.raises(ValueError, match="V3"):
        model.features(x, layers=("V1", "V3"))
    with pytest.raises(ValueError, match="at least one"):
        model.features(x, layers=())
    with pytest.raises(ValueError, match=r"CORnetS: x must have shape \(B, 3, H, W\), got \(3, 32, 32\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="CORnetS: x must be a floating-point tensor"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"CORnetS: x must be a torch\.Tensor of shape \(B, 3, H, W\)"):
        model([[0.0]])  # type: ignore[arg-type]


# ---- checkpoints ---------------------------------------------------------------------------------


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_load_original_format(model: CORnetS, tmp_path) -> None:
    path = tmp_path / "cornet_s.pth"
    original = {
        "epoch": 43,
        "arch": "CORnet-S",
        "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.9}]},
    }
    torch.save(original, path)
    loaded = cornet_s(weights=path)
    _assert_same_weights(loaded, model)
    assert not loaded.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_load_plain_state_dict(model: CORnetS, tmp_path, prefix: str) -> None:
    path = tmp_path / "plain.pt"
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    _assert_same_weights(cornet_s(weights=str(path)), model)
    _assert_same_weights(cornet_s(weights={prefix + k: v for k, v in model.state_dict().items()}), model)


def test_load_safetensors(model: CORnetS, tmp_path) -> None:
    """A state dict saved with safetensors (a ReAlnet's backbone exported beside its .safetensors model)."""
    from safetensors.torch import save_file

    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    _assert_same_weights(cornet_s(weights=path), model)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    with pytest.raises(
        ValueError, match=r"^cornet_s: weights: could not read '.*junk\.safetensors' as safetensors"
    ):
        cornet_s(weights=junk)


def test_load_without_num_batches_tracked(model: CORnetS) -> None:
    # Checkpoints from PyTorch < 0.4.1 have no BatchNorm counters.
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    loaded = cornet_s(weights={"state_dict": sd})
    assert torch.equal(loaded.V4.norm3_3.running_mean, model.V4.norm3_3.running_mean)


def test_bad_checkpoints_list_keys(model: CORnetS, tmp_path) -> None:
    sd = dict(model.state_dict())
    missing = dict(sd)
    del missing["V4.norm3_3.running_mean"], missing["IT.conv2.weight"]
    with pytest.raises(ValueError, match=r"missing keys \(2\).*V4\.norm3_3\.running_mean.*IT\.conv2\.weight"):
        cornet_s(weights=missing)
    extra = dict(sd, **{"V4.norm1_4.weight": torch.ones(1024), "fc.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected keys \(2\).*V4\.norm1_4\.weight.*fc\.bias"):
        cornet_s(weights=extra)
    wrong = dict(sd, **{"decoder.linear.weight": torch.zeros(10, 512)})
    with pytest.raises(ValueError, match=r"shape mismatches.*linear\.weight: checkpoint \(10, 512\)"):
        cornet_s(weights=wrong)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        cornet_s(weights=tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        cornet_s(weights=junk)
    with pytest.raises(TypeError, match="weights must be"):
        cornet_s(weights=3)  # type: ignore[arg-type]


def test_a_realnet_checkpoint_is_named_and_long_key_lists_are_cut(model: CORnetS) -> None:
    """A whole ReAlnet passed as CORnet-S weights (the published Encoder's realnet.module.* + fc_* keys)
    says so instead of listing 174 unexpected and 135 missing keys; other long lists stop at 10."""
    sd = model.state_dict()
    encoder = {f"realnet.module.{k}": v for k, v in sd.items()}
    encoder |= {"fc_it.weight": torch.zeros(128, 25088), "fc.weight": torch.zeros(340, 512)}
    with pytest.raises(ValueError, match=r"a whole ReAlnet checkpoint .* the published Encoder's "
                       r"realnet\.module\.\* and fc_\* keys.*pass it as a model, NAME=FILE"):  # fmt: skip
        cornet_s(weights=encoder)
    ours = {f"backbone.{k}": v for k, v in sd.items()} | {"head.out.weight": torch.zeros(6, 512)}
    with pytest.raises(ValueError, match=r"fastalign's backbone\.\* and head\.\* keys"):
        cornet_s(weights=ours)
    renamed = {f"x.{k}": v for k, v in sd.items()}
    with pytest.raises(ValueError) as info:
        cornet_s(weights=renamed)
    n = sum(1 for k in sd if not k.endswith("num_batches_tracked"))
    assert f"missing keys ({n}): " in str(info.value) and f"... ({n} in all)" in str(info.value)
    assert str(info.value).count("'x.") == 10 and len(str(info.value)) < 2000


def test_nan_and_inf_weights_are_refused_naming_the_keys(model: CORnetS) -> None:
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["V1.conv1.weight"][0, 0, 0, 0] = float("nan")
    sd["IT.norm2_1.running_var"][3] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf in 2 tensor\(s\): \['V1\.conv1\.weight', "
                       r"'IT\.norm2_1\.running_var'\]"):  # fmt: skip
        cornet_s(weights=sd)


@pytest.mark.slow
def test_torch_compile_fullgraph_training_step() -> None:
    # fullgraph=True fails on any graph break (the original mutates conv2.stride inside forward);
    # aot_eager traces forward and backward like inductor does, without compiling C++ kernels.
    eager = _narrow_cornet_s(seed=0).train()
    compiled_model = _narrow_cornet_s(seed=0).train()
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    y_ref, y = eager(x), compiled(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y_ref.square().sum().backward()
    y.square().sum().backward()
    for (name, p_ref), p in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, b_ref), b in zip(eager.named_buffers(), compiled_model.buffers(), strict=True):
        torch.testing.assert_close(b, b_ref, rtol=1e-5, atol=1e-6, msg=name)


# ---- input dtype and constructor arguments ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_input_dtype_must_match_the_weights(model: CORnetS, dtype: torch.dtype) -> None:
    """Used to be conv2d's RuntimeError "expected scalar type Double but found Float"."""
    x = torch.randn(1, 3, 8, 8).to(dtype)
    match = rf"CORnetS: x is {dtype} but the model's weights are torch.float32.*x\.to\(torch\.float32\)"
    with pytest.raises(TypeError, match=match):
        model(x)
    with pytest.raises(TypeError, match=match):
        model.features(x, "V1")


def test_autocast_takes_what_it_casts(model: CORnetS) -> None:
    """Under autocast a float32 model takes float32 and bf16 input alike (conv casts both); float64 is
    not cast by autocast, so it is still a TypeError."""
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(x)
        got = model(x.bfloat16())  # what autocast casts x to: the same logits
        with pytest.raises(TypeError, match=r"x is torch\.float64 .*autocast.*not float64"):
            model(x.double())
    assert want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_input_device_must_match_the_weights(model: CORnetS) -> None:
    with pytest.raises(ValueError, match="CORnetS: x is on meta but the model's weights are on cpu"):
        model(torch.randn(1, 3, 8, 8, device="meta"))


@pytest.mark.parametrize(("num_classes", "error"), [(-1, ValueError), (0, ValueError), (2.5, TypeError)])
def test_num_classes_is_validated(num_classes: object, error: type) -> None:
    with pytest.raises(error, match=rf"CORnetS: num_classes must be a positive int, got .*{num_classes}"):
        CORnetS(num_classes=num_classes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "error"),
    [(dict(times=0), ValueError), (dict(times=1.5), TypeError), (dict(out_channels=-4), ValueError),
     (dict(in_channels=True), TypeError)],
    ids=str,
)  # fmt: skip
def test_block_arguments_are_validated(change: dict, error: type) -> None:
    (name,) = change
    with pytest.raises(error, match=f"CORblockS: {name} must be a positive int"):
        CORblockS(**{"in_channels": 3, "out_channels": 4, "times": 1, **change})


def test_a_meta_cornet_s_skips_the_initialisation(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the meta device (shape probes such as ReAlnet's tap shapes) nothing is drawn: the first normal_ on
    a meta tensor costs seconds of one-time setup per process. On a real device the original's init runs."""
    calls: list[str] = []
    monkeypatch.setattr(torch.nn.init, "normal_", lambda t, *a, **k: calls.append(str(t.device)) or t)
    with torch.device("meta"):
        meta = CORnetS()
    assert calls == [] and meta.V1.conv1.weight.is_meta
    CORnetS()
    assert len(calls) == sum(isinstance(m, torch.nn.Conv2d) for m in meta.modules()) and set(calls) == {"cpu"}


def _seeded_build(
    monkeypatch: pytest.MonkeyPatch, skip: bool, weights: object = None
) -> tuple[dict, torch.Tensor]:
    """cornet_s(weights) from seed 0 with the skipped draws on or off: its state_dict and the generator's
    state after it."""
    from fastalign.models.cornet import model as cornet_model

    monkeypatch.setattr(cornet_model, "_SKIP_CHECKED", [skip and cornet_model._discard_matches_torch()])
    torch.manual_seed(0)
    net = cornet_s(weights)  # type: ignore[arg-type]
    return net.state_dict(), torch.get_rng_state()


@pytest.mark.parametrize("from_checkpoint", [False, True])
def test_skipped_draws_give_the_original_weights_and_generator_state(
    monkeypatch: pytest.MonkeyPatch, tmp_path, from_checkpoint: bool
) -> None:
    """The construction that skips the random values nothing reads (nn.Conv2d's kaiming_uniform_ under the
    original's normal_, and every draw a checkpoint replaces) gives bitwise the weights and generator state
    of the plain construction, the original's, so that seeded code drawing next gets the same numbers."""
    from fastalign import _ext
    from fastalign.models.cornet import model as cornet_model

    if _ext.why_ops_missing(["rng_discard"]) is not None:
        pytest.skip(str(_ext.why_ops_missing(["rng_discard"])))
    assert cornet_model._discard_matches_torch()  # else both builds below would draw every value
    weights = None
    if from_checkpoint:
        torch.manual_seed(5)
        weights = tmp_path / "cornet_s.pth"
        torch.save(cornet_s().state_dict(), weights)
    plain, plain_state = _seeded_build(monkeypatch, skip=False, weights=weights)
    fast, fast_state = _seeded_build(monkeypatch, skip=True, weights=weights)
    assert torch.equal(plain_state, fast_state)
    assert plain.keys() == fast.keys()
    for key in plain:
        assert torch.equal(plain[key], fast[key]), key


def test_rng_discard_advances_like_the_draws_it_replaces() -> None:
    """torch.ops.fastalign.rng_discard(generator, n) leaves a CPU generator where n float32 uniform_ draws
    leave it (normal_: one per value and 16 more for a size that is not a multiple of 16), across the
    624-word state's twists and from any position in it; the default generator when None."""
    from fastalign import _ext
    from fastalign.models.cornet.model import _normal_draws

    if _ext.why_ops_missing(["rng_discard"]) is not None:
        pytest.skip(str(_ext.why_ops_missing(["rng_discard"])))
    for before in (0, 1, 623):
        for n in (0, 1, 622, 623, 624, 625, 1248, 1249, 5000):
            a, b = torch.Generator().manual_seed(n), torch.Generator().manual_seed(n)
            torch.empty(before).uniform_(generator=a)
            torch.empty(before).uniform_(generator=b)
            torch.empty(n).uniform_(generator=a)
            torch.ops.fastalign.rng_discard(b, n)
            assert torch.equal(a.get_state(), b.get_state()), (before, n)
            assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    for n in (16, 17, 31, 32, 1001):
        a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        values = torch.empty(n)
        values.normal_(generator=a)
        torch.ops.fastalign.rng_discard(b, _normal_draws(values))
        assert torch.equal(a.get_state(), b.get_state()), n
    torch.manual_seed(3)
    torch.rand(700)
    expected = torch.get_rng_state()
    torch.manual_seed(3)
    torch.ops.fastalign.rng_discard(None, 700)
    assert torch.equal(torch.get_rng_state(), expected)
    with pytest.raises(ValueError, match=r"rng_discard: n must be in \[0, 2\^36\], got -1"):
        torch.ops.fastalign.rng_discard(None, -1)
    with pytest.raises(ValueError, match="_normal_draws: t must be a contiguous tensor of >= 16 values"):
        _normal_draws(torch.empty(15))


@pytest.mark.parametrize("where", ["float64", "meta"])
def test_other_default_dtypes_and_devices_draw_every_value(where: str) -> None:
    """Draws are skipped only where they were checked (float32 parameters on the CPU): under another
    default dtype the plain construction runs, and on the meta device nothing is drawn at all."""
    from fastalign.models.cornet.model import _skip_draws

    if where == "float64":
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            assert not _skip_draws()
            torch.manual_seed(0)
            net = CORnetS()
        finally:
            torch.set_default_dtype(old)
        assert net.V1.conv1.weight.dtype == torch.float64
        assert torch.all(net.V2.norm1_1.running_var == 1)
    else:
        with torch.device("meta"):
            assert not _skip_draws()
            state = torch.get_rng_state()
            net = CORnetS()
        assert net.V1.conv1.weight.is_meta and torch.equal(torch.get_rng_state(), state)


def test_fake_tensor_mode_builds_as_the_original() -> None:
    """Under a dispatch mode (FakeTensorMode, as tracing uses) construction takes the original's path."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastalign.models.cornet.model import _skip_draws

    with FakeTensorMode():
        assert not _skip_draws()
        net = CORnetS()
    assert tuple(net.V4.conv2.weight.shape) == (1024, 1024, 3, 3)


def test_feature_errors_name_the_method() -> None:
    """Bad layers or timesteps name the method, as the input checks do (they said only "layers: ...")."""
    m = cornet_s()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"^CORnetS\.features: layers: unknown layer 'V3'"):
        m.features(x, layers="V3")
    with pytest.raises(ValueError, match=r"^CORnetS\.features: timesteps must be 'last' or 'all'"):
        m.features(x, timesteps="first")
    with pytest.raises(ValueError, match=r"^CORnetS\.layer_names: timesteps must be 'all'"):
        CORnetS.layer_names("last")
