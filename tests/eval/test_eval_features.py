"""Features for the evaluation: forward hooks by layer name, CORnet-S and ReAlnet names, run folders, and
the on-disk cache (a second call does not run the model)."""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from eval_helpers import Tiny
from torch import nn

import fastalign.eval as fe
from fastalign.data import ImageTransform, SyntheticThings, load_images
from fastalign.eval.features import as_models
from fastalign.models import CORnetS, cornet_s, realnet, save_realnet


def _images(things: SyntheticThings, n: int | None = None) -> list[str]:
    return fe.load_brain(things).images[:n]


def _batch(paths: list[str], size: int = 24) -> torch.Tensor:
    return load_images(paths, ImageTransform(size, crop=False))


def test_hooks_give_each_layers_output(eval_things: SyntheticThings) -> None:
    paths = _images(eval_things)
    tiny = Tiny()
    feats = fe.layer_features(fe.EvalModel("tiny", tiny, layers=["conv", "pool", "fc"]), paths, image_size=24)
    x = _batch(paths)
    with torch.no_grad():
        conv = tiny.conv(x)
        want = {"conv": conv, "pool": tiny.pool(tiny.relu(conv)), "fc": tiny(x)}
    assert list(feats) == ["conv", "pool", "fc"]
    for name, value in want.items():
        assert feats[name].dtype == np.float32
        np.testing.assert_allclose(feats[name], value.flatten(1).numpy(), rtol=1e-5, atol=1e-6)
    assert tiny.training  # the mode is restored


def test_non_square_images_are_squeezed_not_cropped_as_published(tmp_path) -> None:
    # the published RSA and training resize with Resize((224, 224)): a wide image's edges stay in
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"wide_{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    tiny = Tiny()
    feats = fe.layer_features(fe.EvalModel("tiny", tiny, layers=["fc"]), paths, image_size=16)
    squeezed = [Image.open(p).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR) for p in paths]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = torch.stack([(torch.from_numpy(np.asarray(im)).float() / 255 - mean) / std for im in squeezed])
    with torch.no_grad():
        want = tiny(x.permute(0, 3, 1, 2).contiguous())
    np.testing.assert_allclose(feats["fc"], want.numpy(), rtol=1e-5, atol=1e-6)


def test_a_module_called_twice_gives_its_last_call() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(self.block(x))

    from fastalign.eval.features import _Taps

    model = Twice()
    x = torch.randn(2, 3, 4, 4)
    out = _Taps(model, {"block": "block"}, "twice")(x)
    torch.testing.assert_close(out, model(x).flatten(1))


def test_weights_are_hashed_only_for_a_cache(eval_things: SyntheticThings, tmp_path, monkeypatch) -> None:
    """The cache key hashes the module's weights (0.3-0.4 s for a CORnet-S): without a cache it is not
    made; with one, once per call; the features are the same either way."""
    import fastalign.eval.features as ef

    calls = []
    real = ef.model_key
    monkeypatch.setattr(ef, "model_key", lambda module: calls.append(1) or real(module))
    model = fe.EvalModel("tiny", Tiny(), layers=["conv", "fc"])
    plain = fe.layer_features(model, _images(eval_things), image_size=24)
    assert calls == []
    cached = fe.layer_features(model, _images(eval_things), image_size=24, cache_dir=tmp_path / "cache")
    assert calls == [1]
    for layer in plain:
        np.testing.assert_array_equal(plain[layer], cached[layer])


def test_cache_second_call_does_not_run_the_model(eval_things: SyntheticThings, tmp_path) -> None:
    """Rows cached by weights, layers, transform and file content: a second call reads them (the model
    does not run), other weights compute afresh, a lost sidecar costs one image's forward."""
    paths = _images(eval_things)
    cache = tmp_path / "cache"
    tiny = Tiny()
    model = fe.EvalModel("tiny", tiny, layers=["conv", "fc"])
    first = fe.layer_features(model, paths, image_size=24, cache_dir=cache, batch_size=5)
    assert tiny.calls == 3  # 12 images in batches of 5
    again = fe.layer_features(model, paths, image_size=24, cache_dir=cache, batch_size=5)
    assert tiny.calls == 3
    for layer in first:
        np.testing.assert_array_equal(first[layer], again[layer])
    other = Tiny(seed=1)
    changed = fe.layer_features(fe.EvalModel("tiny", other, layers=["conv", "fc"]), paths, image_size=24,
                                cache_dir=cache)  # fmt: skip
    assert other.calls == 1 and not np.array_equal(changed["fc"], first["fc"])
    for sidecar in [f for f in os.listdir(cache) if f.startswith("layers-")]:
        os.remove(cache / sidecar)
    repaired = fe.layer_features(model, paths, image_size=24, cache_dir=cache)
    assert tiny.calls == 4  # one image, to learn the layers' widths
    np.testing.assert_array_equal(repaired["conv"], first["conv"])

    # through evaluate: the second evaluation of the same model runs nothing
    counted = Tiny(seed=2)
    models = [fe.EvalModel("tiny", counted)]
    run = dict(out=tmp_path / "out", permutations=10, image_size=24, layers=["pool", "fc"])
    one = fe.evaluate(eval_things, models, **run)
    calls = counted.calls
    two = fe.evaluate(eval_things, models, **run)
    assert models[0].layers is None  # the caller's model is not changed
    assert calls >= 1 and counted.calls == calls
    assert len(one.rows) == len(two.rows)
    for a, b in zip(one.rows, two.rows, strict=True):
        assert all(
            a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a
        )
    assert os.path.isdir(tmp_path / "out" / "cache")


def test_cornet_s_by_name_and_run_folders(eval_things: SyntheticThings, tmp_path) -> None:
    """'cornet_s' without weights is the CORnet-S that fastalign align starts from with the same seed
    (torch.manual_seed(seed), then the backbone is built first), the global RNG untouched; its area names
    tap the block outputs and avgpool. A run folder: the family is the parent of sub-XX folders, the
    subject and modality come from config.json, "response" taps the encoding head."""
    torch.manual_seed(3)
    net = realnet(n_out=6, image_size=24).eval()  # align's starting model for seed 3
    state = torch.random.get_rng_state()
    (model,) = as_models(["cornet_s"], weights=None, seed=3, layers=None)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert isinstance(model.module, CORnetS) and model.layers == list(fe.DEFAULT_LAYERS)
    want = net.backbone.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.module.state_dict().items())
    paths = _images(eval_things, 3)
    x = _batch(paths)
    feats = fe.layer_features(model, paths, image_size=24)
    with torch.no_grad():  # one CORnet-S forward costs seconds on a CPU whatever the image size: one here
        ref = net.backbone.features(x, layers=fe.DEFAULT_LAYERS)
        response = net.head({a: ref[a] for a in net.areas})
    for layer in fe.DEFAULT_LAYERS:
        np.testing.assert_allclose(feats[layer], ref[layer].flatten(1).numpy(), rtol=1e-4, atol=1e-5)
    del model, feats

    folder = tmp_path / "realnet" / "sub-02"
    save_realnet(net, folder)
    with open(folder / "config.json", "w") as f:
        json.dump({"config": {"modality": "eeg"}}, f)
    with pytest.raises(ValueError, match="does not say which subject and modality"):
        fe.EvalModel.from_run(folder)
    with open(folder / "config.json", "w") as f:  # a fastalign decode run: its model is a brain encoder
        json.dump({"config": {"recipe": "decode", "subject": 2, "modality": "eeg"}, "fit": {}}, f)
    with pytest.raises(ValueError, match=r"is a run folder of fastalign decode \(config.recipe 'decode'\)"):
        fe.EvalModel.from_run(folder)
    with open(folder / "config.json", "w") as f:  # align's own (config.recipe "realnet") or none
        json.dump({"config": {"recipe": "realnet", "subject": 2, "modality": "eeg"}, "fit": {}}, f)
    assert fe.EvalModel.from_run(folder).subject == "sub-02"
    with open(folder / "config.json", "w") as f:
        json.dump({"config": {"subject": 2, "modality": "eeg"}, "fit": {}}, f)
    run = fe.EvalModel.from_run(folder)
    assert (run.name, run.subject, run.modality, run.source) == ("realnet", "sub-02", "eeg", str(folder))
    run.layers = ["IT", "response"]
    with pytest.raises(
        ValueError,
        match=r"built for 24x24 images but image_size=32; .* pass image_size=24 \(--image-size 24\)",
    ):
        fe.layer_features(run, paths, image_size=32)
    feats = fe.layer_features(run, paths, image_size=24)
    np.testing.assert_allclose(feats["response"], response.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats["IT"], ref["IT"].flatten(1).numpy(), rtol=1e-4, atol=1e-5)


def _same_weights(module: nn.Module, net: nn.Module) -> bool:
    theirs = net.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in module.state_dict().items())


def test_backbone_weights_files_are_the_realnet_of_a_subject(tmp_path) -> None:
    """A CORnet-S without the encoding head (the published backbone-only weights/ReAlnet/sub-XX/realnet.pt,
    a backbone saved from a run) is the ReAlnet of a subject when the file's path or the argument says whom
    and what it was aligned to: the subject its sub-XX folder or a tag, the modality its family folder
    (ReAlnet: EEG, ReAlnet-fMRI: fMRI, a name with the word eeg or fmri) or a tag. It is evaluated at the
    CORnet-S layers; what nothing tells, or what the tags contradict, is refused before it is loaded."""
    from published_formats import realnet_state_dict
    from safetensors.torch import save_file

    torch.manual_seed(0)
    nets = [CORnetS().eval(), CORnetS().eval()]
    eeg1 = tmp_path / "weights" / "ReAlnet" / "sub-01" / "realnet.pt"
    eeg2 = tmp_path / "weights" / "ReAlnet" / "sub-02" / "realnet.pt"
    fmri = tmp_path / "weights" / "ReAlnet-fMRI" / "sub-01" / "realnet.pt"
    mine = tmp_path / "exports" / "ReAlnet_EEG" / "sub-03" / "backbone.safetensors"
    for file in (eeg1, eeg2, fmri, mine):
        file.parent.mkdir(parents=True)
    torch.save(realnet_state_dict(nets[0]), eeg1)
    torch.save(realnet_state_dict(nets[1]), eeg2)
    fmri.symlink_to(eeg1)  # one 200 MB file serves several
    save_file({k: v.contiguous() for k, v in nets[1].state_dict().items()}, str(mine))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        models = as_models([str(eeg1), str(eeg2), str(fmri), str(mine)], weights=None, seed=0, layers=None)
    assert [(m.name, m.subject, m.modality, m.source, m.layers) for m in models] == [
        ("ReAlnet", "sub-01", "eeg", str(eeg1), list(fe.DEFAULT_LAYERS)),
        ("ReAlnet", "sub-02", "eeg", str(eeg2), list(fe.DEFAULT_LAYERS)),
        ("ReAlnet-fMRI", "sub-01", "fmri", str(fmri), list(fe.DEFAULT_LAYERS)),
        ("ReAlnet_EEG", "sub-03", "eeg", str(mine), list(fe.DEFAULT_LAYERS)),
    ]
    assert all(isinstance(m.module, CORnetS) for m in models)
    assert [_same_weights(m.module, net) for m, net in zip(models, [*nets, *nets], strict=True)] == [True] * 4
    del models

    # tags after "@", in any order and case: what they say is taken over the folders' names
    lone = tmp_path / "realnet.pt"  # no sub-XX folder, no family folder
    lone.symlink_to(eeg2)
    tagged = as_models([f"b@fMRI,sub-4={lone}", f"c@sub-05,fmri={eeg1}"], weights=None, seed=0, layers=["IT"])
    assert [(m.name, m.subject, m.modality) for m in tagged] == [
        ("b", "sub-04", "fmri"),
        ("c", "sub-05", "fmri"),
    ]
    assert _same_weights(tagged[0].module, nets[1])
    api = fe.EvalModel.from_weights(lone, "b", subject=4, modality="fMRI")
    assert (api.name, api.subject, api.modality, api.source) == ("b", "sub-04", "fmri", str(lone))
    del tagged, api
    with pytest.raises(
        ValueError,
        match=r"^evaluate: model 'ReAlnet' has no layer 'response'; layers are V1.*; layers \(--layers\) "
        r"apply to every model, and 'response', a ReAlnet's encoding head, is added to the aligned models",
    ):
        as_models([str(eeg1)], weights=None, seed=0, layers=["IT", "response"])
    with pytest.raises(ValueError, match=r"the models named 'ReAlnet' must all be aligned to one modality"):
        as_models([str(eeg1), f"ReAlnet@fmri={eeg2}"], weights=None, seed=0, layers=["IT"])

    headless = r"holds a CORnet-S without ReAlnet's encoding head \(such as the published backbone-only "
    cornet = r"to evaluate it as an unaligned CORnet-S, name it 'cornet_s' with weights='{}' \(--models "
    unnamed = []
    for folder in ("other", "eeg-vs-fmri"):  # a family folder that names no modality, or both
        file = tmp_path / folder / "sub-01" / "realnet.pt"
        file.parent.mkdir(parents=True)
        file.symlink_to(eeg1)
        unnamed.append(file)
    refused = {
        str(unnamed[0]): (
            rf"^evaluate: models\[0\] = '{re.escape(str(unnamed[0]))}' {headless}.*, and nothing says "
            r"whether it was aligned to EEG or fMRI \(its family folder 'other' names neither; the published "
            r"weights/ReAlnet/ are EEG, weights/ReAlnet-fMRI/ fMRI\): to evaluate it as the ReAlnet of a "
            r"subject, name it: NAME@eeg=FILE or NAME@fmri=FILE \(EvalModel.from_weights\(path, "
            rf"modality=...\)\); {cornet.format(re.escape(str(unnamed[0])))}"
        ),
        str(unnamed[1]): r"its family folder 'eeg-vs-fmri' names neither",
        str(lone): (
            r"and no folder of its path is named sub-XX \(the published layout is weights/ReAlnet/sub-01/"
            r"realnet\.pt\); nothing says whether .*: .* name them: NAME@sub-XX,eeg=FILE or NAME@sub-XX,"
            r"fmri=FILE \(EvalModel.from_weights\(path, subject=..., modality=...\)\); to evaluate it as an"
        ),
        f"x@sub-02={lone}": r"name it: NAME@sub-02,eeg=FILE or NAME@sub-02,fmri=FILE \(EvalModel",
        f"x@eeg={lone}": r"name it: NAME@sub-XX,eeg=FILE \(EvalModel.from_weights\(path, subject=...\)\)",
        f"x@sub-01,meg={eeg1}": (
            r"'meg' after '@' is neither a subject \(sub-XX\) nor a modality \(eeg, fmri\); expected "
            r"NAME@sub-XX=FILE, NAME@eeg=FILE or NAME@sub-XX,fmri=FILE$"
        ),
        f"x@sub-01,sub-2={eeg1}": r"gives a model 2 subjects: \['sub-01', 'sub-02'\]$",
        f"x@eeg,FMRI={eeg1}": r"gives a model 2 modalities: \['eeg', 'fmri'\]$",
        f"x@={eeg1}": r"'' after '@' is neither a subject",
        f"cornet_s@sub-01,eeg={eeg1}": r"with the name 'cornet_s'; expected a name other than '' and",
        f"@sub-01,eeg={eeg1}": r"with the name ''; expected a name other than",
    }
    for spec, match in refused.items():
        with pytest.raises(ValueError, match=match):
            as_models([spec], weights=None, seed=0, layers=["IT"])
    with pytest.raises(ValueError, match=r"^evaluate: modality must be 'eeg' or 'fmri', got 'meg' \(str\)$"):
        fe.EvalModel.from_weights(eeg1, modality="meg")
    with pytest.raises(ValueError, match=rf"^evaluate: path='{re.escape(str(lone))}' {headless}"):
        fe.EvalModel.from_weights(lone, subject=1)


def test_a_backbone_file_is_evaluated_as_its_module_given_from_python(
    eval_things: SyntheticThings, tmp_path
) -> None:
    """EvalModel.from_weights on a backbone-only file gives, row for row, what the same CORnet-S given from
    Python with its subject and modality gives (EvalModel(name, cornet_s(weights=FILE), subject=...,
    modality=...)): within and across subjects on its own modality, across modalities on the other."""
    from published_formats import realnet_state_dict

    torch.manual_seed(1)
    file = tmp_path / "weights" / "ReAlnet-fMRI" / "sub-02" / "realnet.pt"
    file.parent.mkdir(parents=True)
    torch.save(realnet_state_dict(CORnetS()), file)
    run = dict(
        out=None, modality=["eeg", "fmri"], image_size=24, layers=["IT"], permutations=10, cache_dir=None
    )
    by_file = fe.evaluate(eval_things, [fe.EvalModel.from_weights(file)], **run).rows
    module = fe.EvalModel("ReAlnet-fMRI", cornet_s(weights=file), subject=2, modality="fmri")
    by_module = fe.evaluate(eval_things, [module], **run).rows
    assert len(by_file) == len(by_module) > 0
    for a, b in zip(by_file, by_module, strict=True):
        assert all(
            a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a
        )
    subjects = fe.load_brain(eval_things).subjects("eeg")
    assert {(r["modality"], r["subject"], r["comparison"]) for r in by_file} == {
        *(("fmri", s, "within" if s == "sub-02" else "across-subject") for s in subjects),
        *(("eeg", s, "across-modality") for s in subjects),
    }
    assert {(r["model"], r["model_subject"]) for r in by_file} == {("ReAlnet-fMRI", "sub-02")}


def test_run_folders_named_on_the_command_line_and_pooled_families_warned(tmp_path) -> None:
    """Run folders are named after their parent (sub-XX) or themselves; "NAME=FOLDER" names one (where no
    folder is spelled so), which keeps two align calls' runs apart; their sub-XX runs under parents of one
    name pool into one family, which warns."""
    torch.manual_seed(0)
    net = realnet(n_out=6, image_size=24)
    folders = [tmp_path / "a" / "realnet" / "sub-01", tmp_path / "b" / "realnet" / "sub-02"]
    for s, folder in enumerate(folders, start=1):
        save_realnet(net, folder)
        with open(folder / "config.json", "w") as f:
            json.dump({"config": {"subject": s, "modality": "eeg"}, "fit": {}}, f)
        (folder / "summary.json").write_text("{}")  # a finished run
    with pytest.warns(UserWarning, match=r"the runs named 'realnet' come from 2 folders .* name them apart"):
        pooled = as_models([str(f) for f in folders], weights=None, seed=0, layers=["IT"])
    assert [m.name for m in pooled] == ["realnet", "realnet"]
    lone = tmp_path / "d" / "realnet"  # a single-subject align call's run folder, named after itself
    save_realnet(net, lone)
    with open(lone / "config.json", "w") as f:
        json.dump({"config": {"subject": 3, "modality": "eeg"}, "fit": {}}, f)
    (lone / "summary.json").write_text("{}")
    with pytest.warns(UserWarning, match=r"the runs named 'realnet' come from 2 folders"):
        as_models([str(folders[0]), str(lone)], weights=None, seed=0, layers=["IT"])
    third = tmp_path / "a" / "realnet" / "sub-03"  # one align call's runs, one reached through a link
    save_realnet(net, third)
    with open(third / "config.json", "w") as f:
        json.dump({"config": {"subject": 3, "modality": "eeg"}, "fit": {}}, f)
    (third / "summary.json").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one folder: no warning
        as_models([str(folders[0]), str(tmp_path / "link" / "realnet" / "sub-03")], weights=None, seed=0,
                  layers=["IT"])  # fmt: skip
    named = as_models([f"first={folders[0]}", f"second={folders[1]}"], weights=None, seed=0, layers=["IT"])
    assert [(m.name, m.subject) for m in named] == [("first", "sub-01"), ("second", "sub-02")]
    same = tmp_path / "c" / "realnet" / "sub-01"  # two runs of one subject under one name: refused
    save_realnet(net, same)
    with open(same / "config.json", "w") as f:
        json.dump({"config": {"subject": 1, "modality": "eeg"}, "fit": {}}, f)
    (same / "summary.json").write_text("{}")
    with (
        pytest.warns(UserWarning),
        pytest.raises(ValueError, match=r"give them different names \(NAME=FOLDER"),
    ):
        as_models([str(folders[0]), str(same)], weights=None, seed=0, layers=["IT"])
    with pytest.raises(ValueError, match=r"with the name 'cornet_s'; expected a name other than"):
        as_models([f"cornet_s={folders[0]}"], weights=None, seed=0, layers=["IT"])
    # the baseline twice: renaming it is refused above, so the message says to give it once
    with pytest.raises(ValueError, match=r"models\[0\] and models\[1\] both give cornet_s; give it once$"):
        as_models(["cornet_s", "cornet_s"], weights=None, seed=0, layers=["IT"])
    with pytest.raises(FileNotFoundError, match=r"'x=.*': no file or folder at '.*missing'; expected "):
        as_models([f"x={tmp_path / 'missing'}"], weights=None, seed=0, layers=["IT"])


def _conv_net(*rest: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), *rest)


def test_the_cache_follows_the_model_not_only_its_weights(eval_things: SyntheticThings, tmp_path) -> None:
    # one conv's weights in every model: ReLU or Tanh after it, another pooling size, a non-persistent
    # buffer, were all served the first model's cached rows
    paths, cache = _images(eval_things, 4), tmp_path / "cache"
    conv = _conv_net()[0]

    class Shift(nn.Module):
        def __init__(self, by: float) -> None:
            super().__init__()
            self.register_buffer("by", torch.tensor(by), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.by

    nets = {
        "relu": nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()),
        "tanh": nn.Sequential(conv, nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten()),
        "pool3": nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten()),
        "shift0": nn.Sequential(conv, Shift(0.0), nn.AdaptiveAvgPool2d(2), nn.Flatten()),
        "shift5": nn.Sequential(conv, Shift(5.0), nn.AdaptiveAvgPool2d(2), nn.Flatten()),
    }
    for name, net in nets.items():
        model = fe.EvalModel("n", net, layers=["3"])
        cached = fe.layer_features(model, paths, image_size=24, cache_dir=cache)["3"]
        fresh = fe.layer_features(model, paths, image_size=24)["3"]
        np.testing.assert_array_equal(cached, fresh, err_msg=name)
        with torch.inference_mode():
            np.testing.assert_allclose(fresh, net(_batch(paths)).numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_layer_output_changed_in_place_later_is_taken_as_it_was(eval_things: SyntheticThings) -> None:
    paths = _images(eval_things, 3)
    net = _conv_net(nn.ReLU(inplace=True))  # rewrites the conv's output after its hook ran
    got = fe.layer_features(fe.EvalModel("n", net, layers=["0"]), paths, image_size=24)["0"]
    with torch.inference_mode():
        want = net[0](_batch(paths)).reshape(3, -1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.min() < 0


def test_each_submodules_training_flag_is_restored(eval_things: SyntheticThings) -> None:
    net = _conv_net(nn.BatchNorm2d(4), nn.Dropout())
    net.train()
    net[1].eval()  # a frozen BatchNorm in a network that trains
    fe.layer_features(fe.EvalModel("n", net, layers=["2"]), _images(eval_things, 2), image_size=24)
    assert [m.training for m in net.modules()] == [True, True, False, True]


def test_a_float64_module_gets_float64_images(eval_things: SyntheticThings) -> None:
    net = _conv_net(nn.Flatten()).double()
    got = fe.layer_features(fe.EvalModel("n", net, layers=["1"]), _images(eval_things, 2), image_size=24)["1"]
    with torch.inference_mode():
        np.testing.assert_allclose(got, net(_batch(_images(eval_things, 2)).double()).numpy(), rtol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA refuses cuda")
def test_a_device_this_machine_lacks_is_refused_naming_it(eval_things: SyntheticThings) -> None:
    model = fe.EvalModel("n", _conv_net(nn.Flatten()), layers=["1"])
    for device, words in (("cuda", "'cuda': no CUDA device here"), ("banana", "expected a torch device"),
                          ("meta", "'meta': the meta device holds no data")):  # fmt: skip
        with pytest.raises(ValueError, match=f"^layer_features: device: {words}"):
            fe.layer_features(
                model, _images(eval_things, 2), image_size=24, device=device, fn="layer_features"
            )
        with pytest.raises(ValueError, match=f"^evaluate: device: {words}"):
            fe.evaluate(eval_things, [model], out=None, device=device)
    assert next(model.module.parameters()).device.type == "cpu"  # meta did not take the weights


def test_published_realnet_weights_files_are_models(eval_things: SyntheticThings, tmp_path) -> None:
    """A ReAlnet weights file (the published weights/ReAlnet/sub-XX/encoder.pt) is a model: the family is
    the folder above sub-XX, the subject its sub-XX folder or NAME@sub-XX=FILE, the modality fMRI for 1024
    response values, EEG for 340, else what the family folder says (the published ReAlnet: EEG) or
    NAME@eeg=FILE; a run folder's model.safetensors is its run folder."""
    from published_formats import encoder_state_dict

    torch.manual_seed(0)
    net = realnet(n_out=6, image_size=24).eval()
    first = tmp_path / "weights" / "ReAlnet" / "sub-01" / "encoder.pt"
    first.parent.mkdir(parents=True)
    torch.save(encoder_state_dict(net), first)
    second = tmp_path / "weights" / "ReAlnet" / "sub-02" / "encoder.pt"
    second.parent.mkdir()
    second.symlink_to(first)  # one 200 MB file serves both subjects
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one folder of subjects: one family, no warning
        models = as_models([str(first), str(second)], weights=None, seed=0, layers=["IT", "response"])
    assert [(m.name, m.subject, m.modality, m.source) for m in models] == [
        ("ReAlnet", "sub-01", "eeg", str(first)),
        ("ReAlnet", "sub-02", "eeg", str(second)),
    ]
    paths = _images(eval_things, 2)
    feats = fe.layer_features(models[0], paths, image_size=24)
    with torch.no_grad():
        want = net(_batch(paths))
    np.testing.assert_allclose(feats["response"], want.response.numpy(), rtol=1e-4, atol=1e-5)
    (named,) = as_models([f"pub={first}"], weights=None, seed=0, layers=["IT"])
    assert (named.name, named.subject) == ("pub", "sub-01")
    lone = tmp_path / "best_model_params.pt"  # a notebook's, saved beside it: no subject in its path
    lone.symlink_to(first)
    # no sub-XX folder, and 6 response values (no published size) in no family folder: neither is guessed
    with pytest.raises(
        ValueError,
        match=r"cannot tell whom and what .*: no folder of its path is named sub-XX .*; its encoding head "
        r"predicts 6 values .*; name them: NAME@sub-XX,eeg=FILE or NAME@sub-XX,fmri=FILE",
    ):
        as_models([str(lone)], weights=None, seed=0, layers=["IT"])
    with pytest.raises(
        ValueError, match=r"cannot tell what .*; name it: NAME@sub-03,eeg=FILE or NAME@sub-03,"
    ):
        as_models([f"pub@sub-03={lone}"], weights=None, seed=0, layers=["IT"])
    (told,) = as_models([f"pub@sub-03,eeg={lone}"], weights=None, seed=0, layers=["IT"])
    assert (told.name, told.subject, told.modality) == ("pub", "sub-03", "eeg")
    fmri = realnet(n_out=1024, image_size=24)
    fmri.backbone = net.backbone
    save_realnet(fmri, tmp_path / "fmri" / "sub-04" / "encoder.safetensors")
    (m,) = as_models([str(tmp_path / "fmri" / "sub-04" / "encoder.safetensors")], weights=None, seed=0,
                     layers=["IT"])  # fmt: skip
    assert (m.name, m.subject, m.modality) == ("fmri", "sub-04", "fmri")
    with pytest.raises(  # a published response size names its modality: another one given is refused
        ValueError,
        match=r"'x@eeg=.*encoder\.safetensors' is given modality 'eeg', but its encoding head predicts "
        r"1024 values, the response of the published fMRI ReAlnet \(the EEG one predicts 340\); give 'fmri' "
        r"or none$",
    ):
        as_models([f"x@eeg={tmp_path / 'fmri' / 'sub-04' / 'encoder.safetensors'}"], weights=None, seed=0,
                  layers=["IT"])  # fmt: skip
    run = tmp_path / "runs" / "sub-05"  # a run's own weights file: its config.json names subject, modality
    save_realnet(net, run)
    with open(run / "config.json", "w") as f:
        json.dump({"config": {"subject": 1, "modality": "fmri"}, "fit": {}}, f)
    (run / "summary.json").write_text("{}")
    (m,) = as_models([str(run / "model.safetensors")], weights=None, seed=0, layers=["IT"])
    assert (m.name, m.subject, m.modality, m.source) == ("runs", "sub-01", "fmri", str(run))
    for tags, what in (("sub-01", "a subject"), ("fmri", "a modality"), ("eeg,sub-01", "a subject and a")):
        with pytest.raises(ValueError, match=rf"gives a run folder {what}.*, but its config.json names"):
            as_models([f"x@{tags}={run}"], weights=None, seed=0, layers=["IT"])
    twice = [f"{tmp_path}/ck-eeg/sub-07/{run}/encoder.pt" for run in ("A", "B")]  # runs inside one sub-XX
    for path in twice:
        os.makedirs(os.path.dirname(path))
        os.symlink(first, path)
    with pytest.raises(
        ValueError, match=r"both model 'ck-eeg' of sub-07; .*NAME=FILE.*from_weights\(file, name"
    ):
        as_models(twice, weights=None, seed=0, layers=["IT"])
    other = tmp_path / "sub-06" / "notes.txt"
    other.parent.mkdir()
    other.write_text("x")
    with pytest.raises(
        ValueError, match=r"models\[0\] must be a ReAlnet weights file \(\.pt, \.pth, \.safetensors\)"
    ):
        as_models([str(other)], weights=None, seed=0, layers=["IT"])
    # a file that is no ReAlnet is read before its subject is asked for, and named as the argument given;
    # a CORnet-S without the head (a key of one is enough to tell) is asked what is missing of it
    headless = tmp_path / "cornet_s.pth"
    torch.save({"V1.conv1.weight": torch.zeros(1)}, headless)
    garbage = tmp_path / "sub-06" / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    for call, given in (
        (lambda: fe.EvalModel.from_weights(headless), f"path={str(headless)!r}"),
        (lambda: as_models([f"x@sub-01={headless}"], weights=None, seed=0, layers=["IT"]),
         f"models[0] = 'x@sub-01={headless}'"),
    ):  # fmt: skip
        with pytest.raises(
            ValueError, match=re.escape(f"evaluate: {given} holds a CORnet-S without ReAlnet's")
        ):
            call()
    with pytest.raises(
        ValueError, match=r"with weights='.*' \(--models cornet_s --weights .*cornet_s\.pth\)$"
    ):
        fe.EvalModel.from_weights(headless)
    with pytest.raises(  # told whom and what: then it must be a whole CORnet-S
        ValueError,
        match=r"'x@sub-01,eeg=.*cornet_s\.pth': expected ReAlnet weights .* or a CORnet-S's; cornet_s: "
        r"weights do not match CORnet-S: missing keys",
    ):
        as_models([f"x@sub-01,eeg={headless}"], weights=None, seed=0, layers=["IT"])
    with pytest.raises(
        ValueError,
        match=re.escape(f"evaluate: path={str(garbage)!r}: expected ReAlnet weights (CORnet-S and its"),
    ):
        fe.EvalModel.from_weights(garbage)
    with pytest.raises(
        FileNotFoundError, match=r"evaluate: path='nowhere\.pt': no such file; expected a ReAlnet"
    ):
        fe.EvalModel.from_weights("nowhere.pt")


def test_an_align_model_file_copied_elsewhere_keeps_its_subject_and_modality(aligned_runs, tmp_path) -> None:
    """align records the subject and modality in model.safetensors' metadata, so the file evaluates as that
    subject's ReAlnet wherever it is copied (it was refused outside a sub-XX folder); the record is taken
    over a folder's name, an argument over both, and a record that is no subject is an error."""
    import shutil

    from safetensors import safe_open

    src = aligned_runs.paired / "model.safetensors"
    with safe_open(str(src), "pt") as f:
        metadata = f.metadata()
    assert (metadata["subject"], metadata["modality"]) == ("sub-01", "eeg")
    copy = tmp_path / "exports" / "mine.safetensors"
    copy.parent.mkdir()
    shutil.copy(src, copy)
    model = fe.EvalModel.from_weights(copy)
    assert (model.name, model.subject, model.modality, model.source) == ("mine", "sub-01", "eeg", str(copy))
    elsewhere = tmp_path / "ReAlnet-fMRI" / "sub-02" / "model.safetensors"
    elsewhere.parent.mkdir(parents=True)
    shutil.copy(src, elsewhere)
    with pytest.warns(
        UserWarning, match=r"records that it was aligned to sub-01, but sits in a folder named 'sub-02'"
    ):
        model = fe.EvalModel.from_weights(elsewhere)
    assert (model.name, model.subject, model.modality) == ("ReAlnet-fMRI", "sub-01", "eeg")
    assert fe.EvalModel.from_weights(elsewhere, subject=3).subject == "sub-03"
    bad = tmp_path / "bad.safetensors"
    save_realnet(realnet(weights=src), bad, metadata={"subject": "anyone", "modality": "eeg"})
    with pytest.raises(
        ValueError, match=r"bad.safetensors'?: its metadata records subject 'anyone', which is"
    ):
        fe.EvalModel.from_weights(bad)
    assert fe.EvalModel.from_weights(bad, subject=2).subject == "sub-02"


def test_evaluate_hashes_a_python_module_once(eval_things: SyntheticThings, tmp_path) -> None:
    """A module given from Python is hashed for its feature cache and for config.json: once for both
    within one evaluate (0.15 s each for a CORnet-S), and again in the next call (its weights may have
    changed in between), which then reads the cache."""
    from eval_helpers import Tiny

    class Counted(Tiny):
        hashed = 0

        def state_dict(self, *args: Any, **kwargs: Any) -> Any:
            Counted.hashed += 1
            return super().state_dict(*args, **kwargs)

    net = Counted(0)
    model = fe.EvalModel("tiny", net, layers=["conv"])
    fe.evaluate(eval_things, [model], out=tmp_path / "out", image_size=24, permutations=10)
    assert Counted.hashed == 1 and net.calls > 0
    calls = net.calls
    fe.evaluate(eval_things, [model], out=tmp_path / "out", image_size=24, permutations=10)
    assert Counted.hashed == 2 and net.calls == calls  # hashed again; the rows came from the cache
    with torch.no_grad():
        net.conv.weight.add_(1.0)  # between calls: another key, the module runs again
    fe.evaluate(eval_things, [model], out=tmp_path / "out", image_size=24, permutations=10, overwrite=True)
    assert Counted.hashed == 3 and net.calls > calls
