"""ReAlnet: the one-pass model against CORnet-S and the published two-pass Encoder, and its weights."""

from __future__ import annotations

import copy
import json
import os
import re
import stat
from pathlib import Path
from typing import NamedTuple

import numpy as np
import published_formats  # tests/published_formats.py
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from fastalign.models.cornet import CORnetS, cornet_s
from fastalign.models.realnet_model import (
    AREAS,
    CORNET_S_URL,
    EEG_N_OUT,
    FMRI_N_OUT,
    PUBLISHED_WEIGHTS_URL,
    ReAlnet,
    ReAlnetOutput,
    _split_state_dict,
    realnet,
    save_realnet,
)
from fastalign.train import RunFolder
from fastalign.train.alignment import _read_state

IMG = 32
N_OUT = 12
# The published Encoder's head layers (ReAlnet.py, code/Train_ReAlnet*.ipynb), in its concatenation order.
PUBLISHED_HEAD = published_formats.HEAD


def _x(batch: int = 3, size: int | tuple[int, int] = IMG, seed: int = 1) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> ReAlnet:
    """In eval mode, so that a forward changes nothing; tests that train deep-copy it."""
    torch.manual_seed(0)
    return ReAlnet(N_OUT, image_size=IMG).eval()


def _published_state_dict(m: ReAlnet) -> dict[str, torch.Tensor]:
    """``Encoder(realnet, n).state_dict()`` of the published code, realnet being DataParallel(CORnet_S())."""
    return published_formats.encoder_state_dict(m)


def _published_forward(
    cornet: CORnetS, head: dict[str, torch.Tensor], imgs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The published Encoder.forward: a full pass for the logits, then V1..IT again for the head."""
    outputs = cornet(imgs)
    n = len(imgs)
    v1 = cornet.V1(imgs)
    v2 = cornet.V2(v1)
    v4 = cornet.V4(v2)
    it = cornet.IT(v4)
    features = torch.cat(
        [
            F.relu(F.linear(t.view(n, -1), head[f"{name}.weight"], head[f"{name}.bias"]))
            for t, (_, name) in zip((v1, v2, v4, it), PUBLISHED_HEAD, strict=True)
        ],
        dim=1,
    )
    return outputs, F.linear(features, head["fc.weight"], head["fc.bias"])


class Published(NamedTuple):
    x: torch.Tensor
    logits: torch.Tensor
    response: torch.Tensor
    bn_updates: int  # how often one forward updated BatchNorm's running statistics


@pytest.fixture(scope="module")
def published(model: ReAlnet) -> Published:
    """The published Encoder.forward on ``model``'s weights, in train mode (as in training: both of its
    passes normalise with the same batch statistics). Its first pass is plain CORnet-S."""
    cornet = copy.deepcopy(model.backbone).train()
    head = {k: v for k, v in _published_state_dict(model).items() if k.startswith("fc")}
    x = _x(batch=2)
    with torch.no_grad():
        logits, response = _published_forward(cornet, head, x)
    return Published(x, logits, response, int(cornet.V4.norm3_3.num_batches_tracked))


@torch.no_grad()
def test_output_shapes_eeg_fmri_and_subsets(model: ReAlnet) -> None:
    assert ReAlnet(image_size=IMG, backbone=model.backbone).head.out.out_features == EEG_N_OUT == 340
    out = ReAlnet(FMRI_N_OUT, image_size=IMG, backbone=model.backbone)(_x(batch=2))
    assert isinstance(out, ReAlnetOutput)
    assert out.logits.shape == (2, 1000) and out.response.shape == (2, 1024)
    small = ReAlnet(5, areas=("V4", "IT"), width=3, image_size=(IMG, 48), backbone=model.backbone)
    assert list(small.head.proj) == ["V4", "IT"] and small.head.out.in_features == 6
    assert small.tap_shapes == {"V4": (256, 2, 3), "IT": (512, 1, 2)}
    logits, response = small(_x(batch=2, size=(IMG, 48)))
    assert logits.shape == (2, 1000) and response.shape == (2, 5)
    assert small(_x(batch=0, size=(IMG, 48))).response.shape == (0, 5)


def test_head_in_features_at_224_are_the_published_and_parameter_count() -> None:
    with torch.device("meta"):
        m = ReAlnet()
    assert {a: p.in_features for a, p in m.head.proj.items()} == {
        "V1": 200_704,
        "V2": 100_352,
        "V4": 50_176,
        "IT": 25_088,
    }
    assert m.head.out.in_features == 512 and m.head.out.out_features == 340
    assert sum(p.numel() for p in m.backbone.parameters()) == 53_416_616
    assert sum(p.numel() for p in m.parameters()) == 101_760_508  # the number docs/realnet.md gives


def test_one_pass_equals_the_published_two_passes_and_trains_the_backbone(
    model: ReAlnet, published: Published
) -> None:
    ours = copy.deepcopy(model).train()
    logits, response = ours(published.x)
    torch.testing.assert_close(logits, published.logits, rtol=0, atol=0)
    torch.testing.assert_close(response, published.response, rtol=1e-6, atol=1e-6)
    # One pass updates BatchNorm's running statistics once, as plain CORnet-S; the published code twice.
    assert int(ours.backbone.V4.norm3_3.num_batches_tracked) == 1 and published.bn_updates == 2
    # The response alone trains every block and the head; only the classifier is left out.
    response.square().mean().backward()
    grads = {k: p.grad for k, p in ours.named_parameters()}
    assert all(g is None for k, g in grads.items() if k.startswith("backbone.decoder."))
    assert not [k for k, g in grads.items() if not k.startswith("backbone.decoder.") and g is None]
    for area in AREAS:
        block = getattr(ours.backbone, area)
        conv = block.conv1 if area == "V1" else block.conv3
        assert conv.weight.grad.abs().sum() > 0, area


@torch.no_grad()
def test_fuse_training_path(model: ReAlnet, published: Published) -> None:
    fused = copy.deepcopy(model).train()
    # the convs of F.conv2d: BatchNorm in training mode over IT's 1x1 maps of 2 images turns rounding
    # differences into sign flips, so the CPU matrix-product convs are compared in test_cornet_fuse_training
    assert fused.fuse_training("auto", convs=None) is fused and fused.backbone.V4.norm_backend == "auto"
    assert fused.backbone.V4.conv_algorithm is None
    logits, response = fused(published.x)
    torch.testing.assert_close(logits, published.logits)
    torch.testing.assert_close(response, published.response)
    assert fused.fuse_training(None).backbone.IT.conv_algorithm == "auto"  # the default reaches the backbone


@torch.no_grad()
def test_published_format_loads(model: ReAlnet, published: Published, tmp_path: Path) -> None:
    path = tmp_path / "encoder.pt"  # the released weights/ReAlnet/sub-XX/encoder.pt
    torch.save(_published_state_dict(model), path)
    loaded = realnet(weights=path)  # the image size is inferred from the head's shapes
    assert not loaded.training
    assert loaded.config() == {"n_out": N_OUT, "areas": list(AREAS), "width": 128, "image_size": [IMG, IMG]}
    logits, response = loaded.train()(published.x)
    torch.testing.assert_close(logits, published.logits, rtol=0, atol=0)
    torch.testing.assert_close(response, published.response, rtol=1e-6, atol=1e-6)


def test_published_format_wrappers(model: ReAlnet) -> None:
    """The Encoder itself inside DataParallel, or under "state_dict": the same keys once unwrapped."""
    sd = _published_state_dict(model)
    want = _split_state_dict(sd)
    assert want[0].keys() == {f"module.{k}" for k in model.backbone.state_dict()}  # stripped when loading
    assert want[1].keys() == model.head.state_dict().keys()
    for wrapped in ({f"module.{k}": v for k, v in sd.items()}, {"state_dict": sd, "epoch": 3}):
        got = _split_state_dict(wrapped)
        assert [d.keys() for d in got] == [d.keys() for d in want]
        assert all(got[i][k] is want[i][k] for i in (0, 1) for k in want[i])


def test_epoch_checkpoint_of_a_run_loads(model: ReAlnet, tmp_path: Path) -> None:
    """A run folder's checkpoints/epoch-NNNN.pt: the fit loop's dict, the model's state dict under "model"."""
    from fastalign.train.checkpoint import FORMAT, REQUIRED

    optimizer = {"state": {}, "param_groups": [{"lr": 2e-5, "params": [0, 1]}]}
    ckpt = {key: None for key in REQUIRED} | {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer,
    }
    torch.save(ckpt, tmp_path / "epoch-0002.pt")
    loaded = realnet(weights=tmp_path / "epoch-0002.pt")  # the image size inferred from the head's shapes
    assert loaded.config() == model.config()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_published_backbone_only_checkpoint_is_cornet_weights(model: ReAlnet, tmp_path: Path) -> None:
    path = tmp_path / "realnet.pt"  # published: torch.save(DataParallel(CORnet_S()).state_dict())
    torch.save({f"module.{k}": v for k, v in model.backbone.state_dict().items()}, path)
    with pytest.raises(ValueError, match=r"without the encoding head.*cornet_weights"):
        realnet(weights=path)
    m = realnet(cornet_weights=path, n_out=N_OUT, image_size=IMG)
    assert not m.training
    for k, v in model.backbone.state_dict().items():
        torch.testing.assert_close(m.backbone.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_safetensors_round_trip(model: ReAlnet, tmp_path: Path) -> None:
    m = ReAlnet(5, areas=("V2", "IT"), width=3, image_size=(IMG, 40), backbone=model.backbone)
    written = save_realnet(m, tmp_path / "run", {"epoch": "3"})
    assert written == tmp_path / "run" / "model.safetensors"
    assert os.listdir(tmp_path / "run") == ["model.safetensors"]  # no temporary file left
    # the mode open() gives (0o666 less the umask) as every other output: it was 0o600, unreadable to a
    # group that shares the runs
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o666 & ~umask
    run = RunFolder(tmp_path / "fit")
    run.save_model(m, {})  # fit's selected weights, through safetensors too
    assert stat.S_IMODE(os.stat(run.model_path).st_mode) == 0o666 & ~umask
    with safe_open(str(written), framework="pt") as f:
        meta = f.metadata()
    assert meta["epoch"] == "3" and json.loads(meta["fastalign.realnet"]) == m.config()
    loaded = realnet(weights=tmp_path / "run")
    assert loaded.config() == m.config() and loaded.tap_shapes == m.tap_shapes
    assert loaded.state_dict().keys() == m.state_dict().keys()
    for k, v in m.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0, msg=k)
    # a file path is written as given; explicit arguments that agree with the weights are accepted
    other = save_realnet(m, tmp_path / "best.safetensors")
    again = realnet(weights=other, n_out=5, areas=["V2", "IT"], width=3, image_size=(IMG, 40))
    torch.testing.assert_close(again.head.out.weight, m.head.out.weight, rtol=0, atol=0)
    # the loaded tensors are the model's own, not a mapping of the file (which a process that rewrote the
    # file in place would turn into SIGBUS): training in place leaves the file as it was
    maps = Path("/proc/self/maps")  # Linux
    assert not maps.exists() or os.fspath(other) not in maps.read_text()
    with torch.no_grad():
        again.head.out.weight.add_(1.0)
    torch.testing.assert_close(realnet(weights=other).head.out.weight, m.head.out.weight, rtol=0, atol=0)


def test_loading_initialises_nothing_and_shares_nothing(model: ReAlnet) -> None:
    """weights= builds the model on the meta device and makes the weights its tensors: no random
    initialisation to overwrite (the global RNG is untouched), each tensor cast as copying it into a float32
    model would, a state dict in memory copied rather than shared, and BatchNorm counters that old
    checkpoints lack set to 0, as in a new model."""
    ours = model.state_dict()
    rng = torch.random.get_rng_state()
    loaded = realnet(weights=ours)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in loaded.parameters())
    got = loaded.state_dict()
    assert got.keys() == ours.keys()
    for k, v in ours.items():
        assert got[k].device.type == "cpu" and got[k].data_ptr() != v.data_ptr(), k
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)
    old = {
        k: v.double() if v.is_floating_point() else v
        for k, v in _published_state_dict(model).items()
        if not k.endswith("num_batches_tracked")
    }
    from_old = realnet(weights=old).state_dict()
    for k, v in ours.items():
        want = torch.zeros((), dtype=torch.int64) if k.endswith("num_batches_tracked") else v
        torch.testing.assert_close(from_old[k], want, rtol=0, atol=0, msg=k)
    del old["realnet.module.V2.conv1.weight"]
    old["realnet.module.decoder.linear.bias"] = torch.zeros(10)
    with pytest.raises(ValueError, match=r"do not fit a ReAlnet of \{'n_out': 12.*V2\.conv1\.weight.*"
                       r"decoder\.linear\.bias"):  # fmt: skip
        realnet(weights=old)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match=r"areas must be some of .*, got unknown area\(s\) \[.V3.\]"):
        ReAlnet(areas=("V1", "V3"))
    with pytest.raises(ValueError, match="network order"):
        ReAlnet(areas=("IT", "V1"))
    with pytest.raises(ValueError, match="network order"):
        ReAlnet(areas=("V1", "V1"))
    with pytest.raises(ValueError, match="at least one"):
        ReAlnet(areas=())
    with pytest.raises(ValueError, match="width must be a positive int, got 0"):
        ReAlnet(width=0)
    with pytest.raises(TypeError, match="width"):
        ReAlnet(width=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_out must be a positive int, got 0"):
        ReAlnet(0)
    with pytest.raises(ValueError, match=r"image_size\[0\]"):
        ReAlnet(image_size=(0, 32))
    with pytest.raises(TypeError, match="image_size"):
        ReAlnet(image_size="224")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="backbone must be a CORnetS"):
        ReAlnet(backbone=torch.nn.Linear(1, 1))  # type: ignore[arg-type]


@torch.no_grad()
def test_wrong_image_size_at_forward(model: ReAlnet) -> None:
    with pytest.raises(ValueError, match=r"x of size 16x16 gives V1 outputs.*image_size 32x32"):
        model(_x(batch=1, size=16))


def test_weights_that_do_not_fit(model: ReAlnet) -> None:
    path = model.state_dict()  # no metadata: the image size is inferred from the head's shapes
    with pytest.raises(ValueError, match=r"n_out=340 does not match the weights, which have 12"):
        realnet(weights=path, n_out=340)
    with pytest.raises(ValueError, match="width=64 does not match"):
        realnet(weights=path, width=64)
    with pytest.raises(ValueError, match=r"areas=.*does not match"):
        realnet(weights=path, areas=("V4", "IT"))
    with pytest.raises(ValueError, match=r"image_size 64x64 gives head in_features.*for image_size 32x32"):
        realnet(weights=path, image_size=64)
    with pytest.raises(ValueError, match="not both"):
        realnet(weights=path, cornet_weights=path)
    with pytest.raises(ValueError, match="neither a ReAlnet state_dict"):
        realnet(weights={"encoder.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not tensors"):
        realnet(weights={"fc.weight": torch.zeros(2, 2), "fc.note": "x"})
    with pytest.raises(ValueError, match="no encoding head"):
        realnet(weights={f"backbone.{k}": v for k, v in model.backbone.state_dict().items()})


def test_nan_and_inf_weights_are_refused_naming_the_keys(model: ReAlnet) -> None:
    sd = _published_state_dict(model)
    sd["fc.weight"][0, 0] = float("inf")
    sd["realnet.module.V2.conv1.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf in 2 tensor\(s\): .*'realnet\.module\.V2\.conv1"
                       r"\.weight'.*'fc\.weight'"):  # fmt: skip
        realnet(weights=sd)


def test_missing_weights_say_where_the_originals_are(tmp_path: Path) -> None:
    url = re.escape(PUBLISHED_WEIGHTS_URL)
    with pytest.raises(FileNotFoundError, match=url):
        realnet(weights=tmp_path / "sub-01" / "encoder.pt")
    with pytest.raises(FileNotFoundError, match=rf"holds no model\.safetensors.*{url}"):
        realnet(weights=tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(CORNET_S_URL)):
        realnet(cornet_weights=tmp_path / "cornet_s-1d3f7974.pth")


class _Trap:
    """Unpickling this creates a directory: a checkpoint that runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


_NOT_TORCH = r"not a torch checkpoint \(zip or legacy pickle\): 152 bytes starting b'\\x93NUMPY"


def test_empty_and_foreign_files_say_what_they_are(tmp_path: Path) -> None:
    """An empty file and one in no torch format said nothing (EOFError's empty text) or torch's "101"
    (a KeyError on the byte of "e"): the reason now names the size and what the file is not; other
    failures name their exception's type and the file's size."""
    empty, text, cut = tmp_path / "e.pth", tmp_path / "g.pth", tmp_path / "cut.pth"
    empty.write_bytes(b"")
    text.write_bytes(b"hello")
    torch.save({"fc.weight": torch.zeros(64, 64)}, cut)
    cut.write_bytes(cut.read_bytes()[:3000])  # torch's zip, cut short
    for load in (realnet, cornet_s, _read_state):
        with pytest.raises(ValueError, match=r"'.*e\.pth' as a .*checkpoint.*: empty file \(0 bytes\)"):
            load(empty)
        with pytest.raises(ValueError, match=r"not a torch checkpoint \(zip or legacy pickle\): 5 bytes "
                           r"starting b'hello'"):  # fmt: skip
            load(text)
        with pytest.raises(ValueError, match=r": [A-Za-z]+Error: .+ \(a file of 3,000 bytes\)"):
            load(cut)


def test_loading_never_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "encoder.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "trap": _Trap(marker)}, path)
    with pytest.raises(ValueError, match=r"could not read .* as a torch checkpoint") as caught:
        realnet(weights=path)
    assert not marker.exists()
    # torch's own message advises weights_only=False, which would run the trap: never passed on
    npy = tmp_path / "it.npy"
    np.save(npy, np.zeros(3))
    for load in (realnet, cornet_s, _read_state):
        for source, why in ((path, r"no torch file of tensors .* never unpickles"), (npy, _NOT_TORCH)):
            with pytest.raises(ValueError, match=why) as caught:
                load(source)
            assert "weights_only" not in str(caught.value) and not marker.exists()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="as safetensors"):
        realnet(weights=tmp_path)


def test_save_realnet_bad_arguments(model: ReAlnet, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"model must be a ReAlnet .*, got CORnetS"):
        save_realnet(model.backbone, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"metadata must map str to str .*, got 'epoch': 3 \(str: int\)"):
        save_realnet(model, tmp_path, {"epoch": 3})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="metadata must be a mapping of str to str, got"):
        save_realnet(model, tmp_path, [("epoch", "3")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reserved"):
        save_realnet(model, tmp_path, {"fastalign.realnet": "{}"})
    assert not any(tmp_path.iterdir())


def test_tap_shapes_are_the_networks_own() -> None:
    """The arithmetic tap shapes equal what CORnet-S itself gives on the meta device, for square and
    non-square images of odd, even and tiny sizes and every choice of areas."""
    from fastalign.models.realnet_model import AREAS, _tap_shapes

    with torch.device("meta"):
        probe = CORnetS().eval()  # eval: BatchNorm accepts one image of 1x1
    sizes = [(1, 1), (2, 3), (7, 7), (31, 32), (32, 32), (33, 65), (64, 64), (100, 37), (224, 224), (225, 9)]
    for size in sizes:
        h = torch.empty(1, 3, *size, device="meta")
        want = {}
        for area in AREAS:  # the blocks, not features(): CORnetS checks autocast state, which meta lacks
            h = getattr(probe, area)(h)
            want[area] = tuple(h.shape[1:])
        for k in range(1, len(AREAS) + 1):
            for areas in (AREAS[:k], AREAS[k - 1 :]):
                assert _tap_shapes(tuple(areas), size) == {a: want[a] for a in areas}, (size, areas)


def test_an_unfinished_run_folder_loads_with_a_warning(model: ReAlnet, tmp_path: Path) -> None:
    # a run killed after epoch 1 of 3 holds model.safetensors (the best epoch so far) but no summary.json
    folder = tmp_path / "run"
    save_realnet(model, folder)
    (folder / "config.json").write_text("{}")
    with pytest.warns(RuntimeWarning, match="has no summary.json: its run has not finished"):
        realnet(weights=folder)
    (folder / "summary.json").write_text("{}")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        realnet(weights=folder)
