"""fastalign.train.decoding: the NICE / AlignVis decoding recipe on a small synthetic brain."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fit_tiny import forked_child
from forked import free_port, run_ranks
from torch import nn

from fastalign.data import (
    BrainImageDataset,
    SyntheticThings,
    load_fmri,
    load_preprocessed_eeg,
    make_synthetic_things,
    train_val_split,
)
from fastalign.train import FitState, Hook, decoding
from fastalign.train.decoding import Decoder, decode
from fastalign.train.run import RunFolder

N_TEST = 20
# A small NICE that learns in a few epochs on 128 images (the published 40 filters and dropout 0.5 are
# for 16,540 images).
SMALL = dict(n_filters=16, dropout=0.25, proj_dropout=0.25)
FAST = dict(epochs=2, batch_size=32, lr=3e-3, encoder_options=SMALL, progress=False, image_model="features")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's image embedding cache of the shared runs (also tests/cli/test_cli_decode.py's): one
    ReAlnet embedding serves both modules."""
    return tmp_path_factory.getbasetemp() / "decode-embeddings"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SyntheticThings:
    return make_synthetic_things(
        tmp_path_factory.mktemp("decode") / "synth",
        n_train_concepts=16,
        images_per_concept=8,
        n_test=N_TEST,
        n_sessions=2,
        test_repetitions=10,
        raw_sfreq=250.0,
        n_times=100,
        snr=1.0,
        n_voxels=20,
        image_size=16,
        image_source="procedural",
    )


def test_run_folder_summary_and_learnt_temperature(synth: SyntheticThings, tmp_path: Any) -> None:
    out = tmp_path / "run"
    result = decode(synth, 1, out=out, learn_temperature=True, **FAST)
    assert {"config.json", "metrics.jsonl", "model.safetensors", "summary.json"} <= set(os.listdir(out))
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary == result.summary
    assert {"top1", "top3", "top5", "n_gallery", "chance", "temperature", "best_epoch"} <= set(summary)
    assert summary["n_gallery"] == N_TEST
    assert summary["chance"] == {"top1": 1 / N_TEST, "top3": 3 / N_TEST, "top5": 5 / N_TEST}
    assert 0 <= summary["top1"] <= summary["top3"] <= summary["top5"] <= 1
    # what the numbers are of, as config.json describes it (runs compared by their summaries could not
    # tell which image model gave which)
    assert summary["image_model"] == "features (synthetic ground truth)"
    assert summary["subject"] == 1 and summary["train_subjects"] == [1]
    assert "image_model_aligned_to" not in summary
    with open(out / "config.json") as f:
        config = json.load(f)["config"]
    assert config["image_model"] == summary["image_model"]
    assert config["learn_temperature"] is True and config["n_test"] == N_TEST and config["n_val"] == 12
    # The temperature is a parameter the optimiser moved, without weight decay.
    model = result.model
    assert isinstance(model, Decoder) and isinstance(model.log_scale, nn.Parameter)
    assert model.temperature != pytest.approx(0.04, rel=1e-4)
    assert summary["temperature"] == pytest.approx(model.temperature)
    temps = [r["train_temperature"] for r in result.fits[0].history]
    assert len(set(temps)) == len(temps)


def test_fixed_temperature_stays(synth: SyntheticThings, tmp_path: Any) -> None:
    result = decode(synth, 1, out=tmp_path / "run", learn_temperature=False, temperature=0.1, **FAST)
    assert "log_scale" not in dict(result.model.named_parameters())
    assert result.model.temperature == pytest.approx(0.1, rel=1e-6)
    assert result.summary["temperature"] == pytest.approx(0.1, rel=1e-6)


def test_published_defaults_fixed_temperature_drop_last_patience_and_split(
    synth: SyntheticThings, tmp_path: Any
) -> None:
    """By default the temperature stays at the published 0.04, early stopping waits 30 epochs, the short
    last training batch is dropped (AlignVis's drop_last=True) and the validation images are those of
    torch's random_split with the seed (AlignVis's split)."""
    out = tmp_path / "run"
    result = decode(synth, 1, out=out, **FAST)
    assert "log_scale" not in dict(result.model.named_parameters())
    assert result.summary["temperature"] == pytest.approx(0.04, rel=1e-6)
    with open(out / "config.json") as f:
        saved = json.load(f)
    config, fit_args = saved["config"], saved["fit"]
    assert config["learn_temperature"] is False
    assert fit_args["patience"] == 30 and fit_args["drop_last"] is True
    n_train = config["n_train"]
    steps = [r["step"] for r in result.fits[0].history]
    assert steps[0] == n_train // FAST["batch_size"]  # full batches only
    n = config["n_train"] + config["n_val"]
    gen = torch.Generator().manual_seed(0)
    _, val = torch.utils.data.random_split(range(n), [0.9, 0.1], generator=gen)
    assert config["n_val"] == len(val.indices)
    tr, va = train_val_split(n, 0.1, 0, method="random_split")
    assert sorted(val.indices) == va.tolist() and len(tr) == n_train


def test_learnt_temperature_is_clamped_at_a_scale_of_100() -> None:
    """A learnt temperature's scale stops at 100 (CLIP's clamp) when a training forward pass sees it;
    a fixed one is left as given."""
    enc = nn.Linear(4, 3)
    learnt = Decoder(enc, 0.001, learn_temperature=True).train()
    _, temperature = learnt(torch.randn(5, 4))
    assert float(temperature.detach()) == pytest.approx(0.01, rel=1e-6)
    assert learnt.temperature == pytest.approx(0.01, rel=1e-6)
    fixed = Decoder(enc, 0.001, learn_temperature=False).train()
    assert float(fixed(torch.randn(5, 4))[1]) == pytest.approx(0.001, rel=1e-6)


def test_ground_truth_features_retrieve_far_above_chance(synth: SyntheticThings, tmp_path: Any) -> None:
    """What must be shown, at CI size: the synthetic brain's true features as the image model (the
    ceiling) are retrieved from held-out EEG far above chance (20-way: 5% top-1, 25% top-5)."""
    result = decode(synth, 1, out=tmp_path / "run", **{**FAST, "epochs": 20})
    s = result.summary
    assert s["top1"] >= 4 * s["chance"]["top1"], s
    assert s["top5"] >= 2 * s["chance"]["top5"], s


def test_a_seed_set_never_replaces_other_results_without_overwrite(
    synth: SyntheticThings, tmp_path: Any
) -> None:
    # several seeds write out/seed-N and out/summary.json: into a single run's folder, or over the runs of
    # other seeds, that summary replaced theirs (and --overwrite with fewer seeds left stale seed folders)
    one = decode(synth, 1, out=tmp_path / "one", **{**FAST, "epochs": 1}).summary
    single = r"holds a single run \(config\.json\), not the runs of seeds \[0, 1\]; pass overwrite=True"
    with pytest.raises(ValueError, match=single):
        decode(synth, 1, out=tmp_path / "one", seed=[0, 1], **{**FAST, "epochs": 1})
    with open(tmp_path / "one" / "summary.json") as f:
        assert json.load(f) == json.loads(json.dumps(one))  # untouched
    decode(synth, 1, out=tmp_path / "set", seed=[0, 1, 2], **{**FAST, "epochs": 1})
    before = (tmp_path / "set" / "summary.json").read_bytes()
    with pytest.raises(
        ValueError, match=r"holds the runs of seeds \[0, 1, 2\], not the runs of seeds \[5, 6\]"
    ):
        decode(synth, 1, out=tmp_path / "set", seed=[5, 6], **{**FAST, "epochs": 1})
    assert (tmp_path / "set" / "summary.json").read_bytes() == before
    decode(synth, 1, out=tmp_path / "set", seed=[5, 6], overwrite=True, **{**FAST, "epochs": 1})
    assert sorted(os.listdir(tmp_path / "set")) == ["seed-5", "seed-6", "summary.json"]  # no stale seed-2
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds other files \(\['todo\.txt'\]\).*; choose another out"):
        decode(synth, 1, out=tmp_path / "notes", seed=[0, 1], overwrite=True, **{**FAST, "epochs": 1})
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    # a project with a config.json of its own is not a run: --overwrite left it whole only by chance
    # before (a folder holding any config.json was replaced); the current folder is never replaced
    project = tmp_path / "proj"
    project.mkdir()
    (project / "config.json").write_text('{"name": "my app"}')
    (project / "main.py").write_text("precious")
    with pytest.raises(
        ValueError, match=r"holds other files \(\['config\.json', 'main\.py'\]\).*; choose another out"
    ):
        decode(synth, 1, out=project, seed=[0, 1], overwrite=True, **{**FAST, "epochs": 1})
    assert (project / "main.py").read_text() == "precious"
    cwd = os.getcwd()
    os.chdir(tmp_path / "set")
    try:
        with pytest.raises(FileExistsError, match="is the current folder, one above it or the home folder"):
            decode(synth, 1, out=".", seed=[7, 8], overwrite=True, **{**FAST, "epochs": 1})
    finally:
        os.chdir(cwd)
    assert sorted(os.listdir(tmp_path / "set")) == ["seed-5", "seed-6", "summary.json"]


def test_a_seed_set_stopped_before_its_last_seed_resumes(synth: SyntheticThings, tmp_path: Any) -> None:
    # interrupted during seed 0 of [0, 1]: --resume was refused ("holds the runs of seeds [0]"), and the
    # --overwrite it advised deleted seed 0's progress
    decode(synth, 1, out=tmp_path / "set" / "seed-0", seed=0, **{**FAST, "epochs": 1})
    with pytest.raises(ValueError, match=r"pass resume=True \(--resume\) to continue them"):
        decode(synth, 1, out=tmp_path / "set", seed=[0, 1], **{**FAST, "epochs": 1})
    result = decode(synth, 1, out=tmp_path / "set", seed=[0, 1], resume=True, **{**FAST, "epochs": 1})
    assert len(result.fits) == 2 and result.summary["seeds"] == [0, 1]
    # the set's summary holds what a single run's holds for the concept level (plot_topk_bars reads it)
    single = result.fits[0].summary
    assert {"concept_chance", "n_concepts", "n_queries"} <= set(single)  # the synthetic set has concepts
    for key in ("concept_chance", "n_concepts", "n_queries"):
        assert result.summary[key] == single[key], key
    from fastalign.plotting.decoding import plot_topk_bars

    plot_topk_bars({"2 seeds": tmp_path / "set"}, concept=True)  # it raised: no concept chance
    assert sorted(os.listdir(tmp_path / "set")) == ["seed-0", "seed-1", "summary.json"]


def test_resume_refuses_a_run_whose_image_model_changed(synth: SyntheticThings, tmp_path: Any) -> None:
    # config.json named the image model only as "a module" or a run folder's path: a run folder aligned
    # again was resumed against its new embeddings, mixing two models in one run
    def net(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))

    kw = {**FAST, "epochs": 1, "image_size": 16, "cache_dir": tmp_path / "cache"}
    first = decode(synth, 1, out=tmp_path / "run", **{**kw, "image_model": net(0)})
    fingerprint = first.fits[0].run.read_config()["config"]["image_fingerprint"]
    assert len(fingerprint) == 16
    decode(synth, 1, out=tmp_path / "run", resume=True, **{**kw, "image_model": net(0)})  # the same: resumes
    with pytest.raises(
        ValueError, match=rf"different config \(config\.image_fingerprint: '{fingerprint}' -> '"
    ):
        decode(synth, 1, out=tmp_path / "run", resume=True, **{**kw, "image_model": net(1)})


class _Killed(Exception):
    pass


class _KillAtEpoch(Hook):
    """Stops a run as a kill would, at the end of ``epoch`` before its checkpoint (the last one kept is
    the epoch before)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state: FitState) -> None:
        if state.epoch == self.epoch:
            raise _Killed


def test_a_resume_takes_the_data_at_a_new_path(synth: SyntheticThings, tmp_path: Path) -> None:
    """A decode run whose data folder was moved could not be resumed (config.data differed). The data is
    known by what config.json records of its content (the responses' digest, the image embeddings'
    fingerprint, the sizes), so the same files elsewhere are the same run, and other data is refused."""
    first, moved = tmp_path / "first" / "synth", tmp_path / "moved" / "synth"
    shutil.copytree(synth.root, first)
    out, kw = tmp_path / "run", {**FAST, "epochs": 2}
    with pytest.raises(_Killed):
        decode(first, 1, out=out, hooks=[_KillAtEpoch(2)], **kw)
    stored = RunFolder(out).read_config()["config"]
    assert RunFolder(out).checkpoint_epoch(RunFolder(out).latest_checkpoint()) == 1
    shutil.move(first, moved)  # the same files at another path
    result = decode(moved, 1, out=out, resume=True, **kw)
    assert len(stored["responses_digest"]) == 16
    assert result.summary["epochs_run"] == 2
    recorded = RunFolder(out).read_config()["config"]
    assert recorded == {**stored, "data": str(moved)}  # the new path recorded, the rest as it was
    # the same run uninterrupted at the first path: resuming changed nothing but where the data is
    shutil.copytree(moved, first)
    whole = decode(first, 1, out=tmp_path / "whole", **kw)
    assert result.summary["top1"] == whole.summary["top1"]
    for a, b in zip(result.model.state_dict().values(), whole.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # other responses (two test images' EEG swapped), at the old path or the new: another run, named
    eeg = first / "preprocessed_data" / "sub-01" / "preprocessed_eeg_test.npy"
    d = np.load(eeg, allow_pickle=True).item()  # the synthetic set's own file
    d["preprocessed_eeg_data"][[0, 1]] = d["preprocessed_eeg_data"][[1, 0]]
    np.save(eeg, d, allow_pickle=True)
    for data in (first, moved):
        if data == moved:
            shutil.rmtree(moved)
            shutil.copytree(first, moved)
        with pytest.raises(
            ValueError,
            match=r"holds a run with a different config \((config\.data: '.*' -> '.*'; )?"
            r"config\.responses_digest: '[0-9a-f]{16}' -> '[0-9a-f]{16}'\); pass overwrite=True",
        ):
            decode(data, 1, out=out, resume=True, **kw)
    assert RunFolder(out).read_config()["config"] == recorded


def test_a_decode_run_as_the_image_model_is_refused_by_decode(synth: SyntheticThings, tmp_path: Any) -> None:
    decode(synth, 1, out=tmp_path / "dec", **{**FAST, "epochs": 1})
    with pytest.raises(ValueError, match=r"^decode: image_model: .* is a run folder of fastalign decode "):
        decode(synth, 1, out=tmp_path / "again", **{**FAST, "image_model": tmp_path / "dec"})


def test_a_gallery_every_trial_ranks_alike_is_warned_about() -> None:
    # after few steps NICE's BatchNorm running statistics map every trial to nearly one embedding: each
    # ranks the gallery alike and retrieval is exactly at chance, which looked like a result
    g = torch.Generator().manual_seed(0)
    images = torch.randn(10, 8, generator=g, dtype=torch.float64)
    alike = torch.randn(1, 8, generator=g, dtype=torch.float64) + 1e-4 * torch.randn(
        10, 8, generator=g, dtype=torch.float64
    )
    same = (
        r"^decode: all 10 test trials rank the gallery in the same order, so retrieval is at chance: after 12"
    )
    with pytest.warns(RuntimeWarning, match=same):
        decoding._warn_if_collapsed(alike, images, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoding._warn_if_collapsed(
            images + 0.1 * torch.randn(10, 8, generator=g, dtype=torch.float64), images, 12
        )


def test_several_seeds_mean_and_sem(synth: SyntheticThings, tmp_path: Any) -> None:
    result = decode(synth, 1, out=tmp_path / "runs", seed=[3, 4], **{**FAST, "epochs": 1})
    assert sorted(os.listdir(tmp_path / "runs")) == ["seed-3", "seed-4", "summary.json"]
    s = result.summary
    assert [p["seed"] for p in s["per_seed"]] == [3, 4]
    for k in ("top1", "top3", "top5", "temperature"):
        values = [p[k] for p in s["per_seed"]]
        assert s[k] == pytest.approx(np.mean(values))
        assert s[f"{k}_sem"] == pytest.approx(abs(values[0] - values[1]) / 2)
    assert s["per_seed"][0]["top1"] == result.fits[0].summary["top1"]
    assert s["n_gallery"] == N_TEST
    assert s["image_model"] == "features (synthetic ground truth)" and s["subject"] == 1
    with open(tmp_path / "runs" / "summary.json") as f:
        assert json.load(f) == s
    # a random CORnet-S is drawn from each seed: one image model per seed, each named
    per_seed = [
        {**fit.summary, "image_model": f"cornet_s IT (random, seed {n})"}
        for n, fit in zip((3, 4), result.fits, strict=True)
    ]
    assert decoding._aggregate(per_seed, [3, 4])["image_model"] == [
        "cornet_s IT (random, seed 3)",
        "cornet_s IT (random, seed 4)",
    ]


def test_images_embedded_once_unless_the_seed_draws_the_model(
    synth: SyntheticThings, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a CORnet-S without weights depends on the seed (its random start); every other image model is
    embedded once for all seeds (loading a CORnet-S or ReAlnet costs seconds)."""
    calls: list[tuple[Any, int]] = []
    embed = decoding._image_embeddings

    def features_instead(spec: Any, *args: Any, seed: int, **kwargs: Any) -> Any:
        calls.append((spec, seed))
        return embed("features", *args, **{**kwargs, "seed": seed, "weights": None})

    monkeypatch.setattr(decoding, "_image_embeddings", features_instead)
    fast = {**FAST, "epochs": 1, "seed": [3, 4]}
    decode(synth, 1, out=tmp_path / "a", **{**fast, "image_model": "cornet_s"})
    assert calls == [("cornet_s", 3), ("cornet_s", 4)]
    calls.clear()
    decode(synth, 1, out=tmp_path / "b", **{**fast, "image_model": "cornet_s"}, weights=tmp_path / "w.pth")
    decode(synth, 1, out=tmp_path / "c", **fast)
    assert calls == [("cornet_s", 3), ("features", 3)]


def test_module_image_model(synth: SyntheticThings, tmp_path: Any) -> None:
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())  # 12 values per image
    result = decode(synth, 1, out=tmp_path / "m", **{**FAST, "epochs": 1, "image_model": pool}, image_size=16)
    assert result.summary["n_gallery"] == N_TEST
    assert result.model.encoder.embed_dim == 12


@pytest.mark.slow
def test_cornet_s_image_model(synth: SyntheticThings, tmp_path: Any) -> None:
    result = decode(
        synth, 1, out=tmp_path / "c", **{**FAST, "epochs": 1, "image_model": "cornet_s"}, image_size=16
    )
    assert result.summary["n_gallery"] == N_TEST
    with open(tmp_path / "c" / "config.json") as f:
        assert json.load(f)["config"]["image_model"] == "cornet_s IT (random, seed 0)"
    assert os.listdir(os.path.join(synth.root, "embeddings"))  # the embedding cache was used


def test_bad_input(synth: SyntheticThings, tmp_path: Any) -> None:
    with pytest.raises(FileNotFoundError, match=r"no_such\.pth"):
        decode(
            synth,
            1,
            out=tmp_path / "a",
            **{**FAST, "image_model": "cornet_s"},
            weights=tmp_path / "no_such.pth",
        )
    with pytest.raises(ValueError, match="weights are CORnet-S's weights"):
        decode(synth, 1, out=tmp_path / "a", **FAST, weights=tmp_path / "w.pth")
    with pytest.raises(ValueError, match="image_model"):
        decode(synth, 1, out=tmp_path / "a", **{**FAST, "image_model": "vit"})
    with pytest.raises(ValueError, match="layer='avgpool' names a CORnet-S / ReAlnet layer"):
        decode(synth, 1, out=tmp_path / "a", **FAST, layer="avgpool")
    # the feature extractor is evaluate's, but its errors name decode
    with pytest.raises(ValueError, match=r"^decode: model 'cornet_s' has no layer 'V9'; layers are V1, "):
        decode(synth, 1, out=tmp_path / "a", **{**FAST, "image_model": "cornet_s"}, layer="V9", image_size=16)
    with pytest.raises(ValueError, match="encoder"):
        decode(synth, 1, out=tmp_path / "a", **FAST, encoder="transformer")
    with pytest.raises(ValueError, match="subject 2"):
        decode(synth, 2, out=tmp_path / "a", **FAST)
    for name in ("epochs", "batch_size"):
        with pytest.raises(ValueError, match=name):
            decode(synth, 1, out=tmp_path / "a", **{**FAST, name: 0})
    with pytest.raises(ValueError, match="temperature"):
        decode(synth, 1, out=tmp_path / "a", **FAST, temperature=0.0)
    for zero in (0.0, np.float32(0.0)):
        with pytest.raises(
            ValueError, match=r"patience=30 .* val_fraction=0 holds out none; pass patience=None"
        ):
            decode(synth, 1, out=tmp_path / "a", **FAST, val_fraction=zero)
    with pytest.raises(
        ValueError, match=r"temperature=0.005 with learn_temperature=True: a learnt temperature"
    ):
        decode(synth, 1, out=tmp_path / "a", **FAST, temperature=0.005, learn_temperature=True)


def test_amp_and_device_are_checked_before_the_images_are_embedded(
    synth: SyntheticThings, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the images were embedded")

    monkeypatch.setattr(decoding, "_image_embeddings", unread)
    with pytest.raises(ValueError, match=r"^decode: amp='fp8'; expected one of"):
        decode(synth, 1, out=tmp_path / "a", **FAST, amp="fp8")
    with pytest.raises(NotImplementedError, match=r"^decode: amp='fp16' needs a CUDA device"):
        decode(synth, 1, out=tmp_path / "a", **FAST, amp="fp16", device="cpu")
    with pytest.raises(ValueError, match=r"^decode: device: expected a torch device"):
        decode(synth, 1, out=tmp_path / "a", **FAST, device="tpu")
    assert not (tmp_path / "a").exists()


def test_an_encoder_too_large_for_the_memory_is_refused_before_anything_is_written(
    synth: SyntheticThings, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NICE's projection is d x d: at CORnet-S IT's 25,088 dimensions (224 px) 1.3 G parameters, 20 GB
    # to train, where the process used to be killed without a message
    with torch.device("meta"):
        nice = decoding.brain_encoder("nice", 17, 100, 25_088)
    assert sum(p.numel() for p in nice.parameters()) > 1.2e9
    available = decoding._free_memory(torch.device("cpu"))
    assert available is None or available > 0
    seen: list[torch.device] = []

    def tiny(device: torch.device) -> int:
        seen.append(device)
        return 1024

    monkeypatch.setattr(decoding, "_free_memory", tiny)
    out = tmp_path / "run"
    with pytest.raises(
        ValueError, match=r"parameters; training it needs about .* GiB .* 0\.0 GiB\s+available on cpu"
    ):
        decode(synth, 1, out=out, **FAST)
    assert seen == [torch.device("cpu")] and not out.exists()
    monkeypatch.setattr(decoding, "_free_memory", lambda device: None)  # unknown: not checked
    assert decode(synth, 1, out=out, **{**FAST, "epochs": 1}).summary["top1"] >= 0


def _copy(synth: SyntheticThings, tmp_path: Any) -> str:
    root = str(tmp_path / "copy")
    shutil.copytree(synth.root, root, ignore=shutil.ignore_patterns("raw_data", "fmri", "embeddings"))
    return root


def test_precomputed_embeddings_beside_the_images_in_alignvis_layout(
    synth: SyntheticThings, tmp_path: Any
) -> None:
    """image_model="npy:NAME" reads <image stem>_NAME.npy beside each image (AlignVis's layout; (1, d)
    files as its generator writes them): the synthetic brain's true features written so train the same
    decoder, to the bit, as image_model="features". Missing or ragged files and bad names are refused."""
    from fastalign.data import load_image_metadata

    root = _copy(synth, tmp_path)
    meta = load_image_metadata(os.path.join(root, "image_set"))
    with np.load(os.path.join(root, "ground_truth.npz")) as gt:
        truth = {"training": gt["train_features"], "test": gt["test_features"]}
    for split, feats in truth.items():
        for path, row in zip(meta.paths(split), feats, strict=True):
            np.save(os.path.splitext(path)[0] + "_truth.npy", row[None].astype(np.float32))
    kw = {**FAST, "epochs": 1}
    want = decode(root, 1, out=tmp_path / "features", **kw).summary
    got = decode(root, 1, out=tmp_path / "npy", **{**kw, "image_model": "npy:truth"}).summary
    for k in ("top1", "top3", "top5", "best_val_loss"):
        assert got[k] == want[k], k
    with open(tmp_path / "npy" / "config.json") as f:
        config = json.load(f)["config"]
    assert config["image_model"] == "precomputed embeddings 'truth' (<image>_truth.npy)"
    with pytest.raises(
        FileNotFoundError,
        match=r"'npy:other' needs an embedding for every image; \d+ of the \d+ train images have none, "
        r"e\.g\. .*: looked for '.*image_set/training_images/.*_other\.npy' and '.*image_embeddings/"
        r"training_images/.*_other\.npy'",
    ):
        decode(root, 1, out=tmp_path / "a", **{**kw, "image_model": "npy:other"})
    second = os.path.splitext(meta.paths("test")[1])[0] + "_truth.npy"
    np.save(second, np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match=r"holds 3 values, the first embedding \d+; expected one size"):
        decode(root, 1, out=tmp_path / "b", **{**kw, "image_model": "npy:truth"})
    np.save(second, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"is not a plain \.npy array"):
        decode(root, 1, out=tmp_path / "c", **{**kw, "image_model": "npy:truth"})
    for bad in ("npy:", "npy:a/b"):
        with pytest.raises(ValueError, match=r"'npy:NAME' with a file-name suffix NAME"):
            decode(root, 1, out=tmp_path / "d", **{**kw, "image_model": bad})
    with pytest.raises(ValueError, match=r"layer='IT' names a CORnet-S / ReAlnet layer"):
        decode(root, 1, out=tmp_path / "e", **{**kw, "image_model": "npy:truth"}, layer="IT")


def test_precomputed_embeddings_in_alignvis_tree_and_strict_files(
    synth: SyntheticThings, tmp_path: Any
) -> None:
    """AlignVis's loader reads image_embeddings/{training,test}_images/<concept>/<stem>_NAME.npy: found
    there too. Each file must be one finite real (d,) or (1, d) vector in a plain .npy: other shapes of
    the same size, complex values, NaN and zips (.npz, torch files) are refused naming the file."""
    from fastalign.data import load_image_metadata

    root = _copy(synth, tmp_path)
    meta = load_image_metadata(os.path.join(root, "image_set"))
    paths = {"test": meta.paths("test")}
    for i, image in enumerate(paths["test"]):
        rel = os.path.relpath(os.path.splitext(image)[0] + "_e.npy", os.path.join(root, "image_set"))
        os.makedirs(os.path.dirname(os.path.join(root, "image_embeddings", rel)), exist_ok=True)
        np.save(os.path.join(root, "image_embeddings", rel), np.full((1, 16), i, np.float32))
    got = decoding._precomputed_embeddings(paths["test"], "e", "test", root)
    np.testing.assert_array_equal(got, np.repeat(np.arange(N_TEST, dtype=np.float32)[:, None], 16, 1))
    beside = os.path.splitext(paths["test"][2])[0] + "_e.npy"  # beside the image: read first
    cases = {
        "(2, 8)": (np.zeros((2, 8), np.float32), r"float32 array of shape \(2, 8\); expected one embedding"),
        "tokens": (np.zeros((1, 2, 8), np.float32), r"shape \(1, 2, 8\); expected one embedding"),
        "complex": (np.zeros((1, 16), np.complex64), r"complex64 array .* real \(floating or integer\)"),
        "bool": (np.zeros(16, bool), r"bool array .* real"),
        "NaN": (np.full(16, np.nan, np.float32), r"holds NaN or inf; expected a finite embedding"),
    }
    for array, why in cases.values():
        np.save(beside, array)
        with pytest.raises(ValueError, match=re.escape(repr(beside)) + ".* " + why):
            decoding._precomputed_embeddings(paths["test"], "e", "test", root)
    np.save(beside, np.arange(16))  # integers are numbers
    assert decoding._precomputed_embeddings(paths["test"], "e", "test", root)[2, 5] == 5
    for save in (lambda f: np.savez(f, x=np.zeros(16)), lambda f: torch.save(torch.zeros(16), f)):
        with open(beside, "wb") as f:
            save(f)
        with pytest.raises(ValueError, match=re.escape(repr(beside)) + r" is a zip archive \(an \.npz or a "):
            decoding._precomputed_embeddings(paths["test"], "e", "test", root)


def test_embeddings_of_another_image_set_and_nan(synth: SyntheticThings, tmp_path: Any) -> None:
    root = _copy(synth, tmp_path)
    gt_path = os.path.join(root, "ground_truth.npz")
    with np.load(gt_path) as gt:
        gt = dict(gt)
    np.savez(gt_path, **{**gt, "test_features": gt["test_features"][:-1]})
    with pytest.raises(ValueError, match=f"19 test embeddings but the data has {N_TEST} test images"):
        decode(root, 1, out=tmp_path / "a", **FAST)
    os.remove(gt_path)
    with pytest.raises(FileNotFoundError, match=r"ground_truth\.npz"):
        decode(root, 1, out=tmp_path / "c", **FAST)
    np.savez(gt_path, **gt)
    eeg_path = os.path.join(root, "preprocessed_data", "sub-01", "preprocessed_eeg_test.npy")
    eeg = np.load(eeg_path, allow_pickle=True).item()
    eeg["preprocessed_eeg_data"][3, 0, 0, 5] = math.nan
    np.save(eeg_path, eeg)
    with pytest.raises(ValueError, match="NaN"):
        decode(root, 1, out=tmp_path / "b", **FAST)


# ---------------------------------------------------------------------------------- responses as arrays


def _eeg(root: str, subject: int, split: str) -> np.ndarray:
    return load_preprocessed_eeg(os.path.join(root, "preprocessed_data"), subject, split).data


def _weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _assert_same_weights(a: nn.Module, b: nn.Module, rtol: float = 0.0, atol: float = 0.0) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=rtol, atol=atol, err_msg=k)


def test_trial_arrays_equal_the_eeg_files(synth: SyntheticThings, tmp_path: Any) -> None:
    """MEG comes in as (images, repetitions, channels, times) arrays through the same dataset: the EEG
    files' arrays given that way train the same model as the files."""
    fast = {**FAST, "epochs": 1}
    files = decode(synth, 1, out=tmp_path / "files", **fast)
    arrays = {"train": _eeg(synth.root, 1, "training"), "test": _eeg(synth.root, 1, "test")}
    given = decode(synth, 1, out=tmp_path / "arrays", responses=arrays, **fast)
    _assert_same_weights(files.model, given.model)
    assert given.summary["top1"] == files.summary["top1"]
    with open(tmp_path / "arrays" / "config.json") as f:
        config = json.load(f)["config"]
    assert config["modality"] == "array" and config["response_shape"] == [17, 100]


def test_fmri_voxel_arrays(synth: SyntheticThings, tmp_path: Any) -> None:
    fmri = {
        split: load_fmri(os.path.join(synth.root, "fmri", "sub-01", f"fmri_{name}.h5")).data
        for split, name in (("train", "training"), ("test", "test"))
    }
    assert fmri["train"].shape == (128, 3, 20)
    mlp = dict(hidden=64, n_blocks=1, dropout=0.0, block_dropout=0.0)
    fast = {**FAST, "encoder": "mlp", "encoder_options": mlp, "epochs": 10}
    result = decode(synth, 1, out=tmp_path / "fmri", responses=fmri, **fast)
    s = result.summary
    assert s["n_gallery"] == N_TEST and result.model.encoder.n_channels == 20
    assert s["top5"] >= 2 * s["chance"]["top5"], s  # 20 noisy voxels linear in the true features
    # averaged (images, voxels) arrays are the same responses
    averaged = {k: v.mean(axis=1) for k, v in fmri.items()}
    again = decode(synth, 1, out=tmp_path / "fmri2", responses=averaged, **{**fast, "epochs": 1})
    once = decode(synth, 1, out=tmp_path / "fmri3", responses=fmri, **{**fast, "epochs": 1})
    _assert_same_weights(again.model, once.model, rtol=1e-5, atol=1e-6)
    with pytest.raises(
        ValueError, match="encoder='nice' takes \\(channels, times\\) trials, but the responses"
    ):
        decode(synth, 1, out=tmp_path / "x", responses=fmri, **FAST)


def test_array_errors(synth: SyntheticThings, tmp_path: Any) -> None:
    train, test = _eeg(synth.root, 1, "training"), _eeg(synth.root, 1, "test")
    out = tmp_path / "x"
    with pytest.raises(ValueError, match=r"responses\['train'\] holds responses to 127 images, but "
                       r"image_metadata.npy lists 128 training images"):  # fmt: skip
        decode(synth, 1, out=out, responses={"train": train[1:], "test": test}, **FAST)
    with pytest.raises(ValueError, match=r"responses\['train'\] has shape \(128, 2, 16, 100\) but "
                       r"responses\['test'\] has \(20, 20, 17, 100\)"):  # fmt: skip
        decode(synth, 1, out=out, responses={"train": train[:, :, 1:], "test": test}, **FAST)
    nan = test.copy()
    nan[2, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"decode: responses\['test'\] holds 1 NaN"):
        decode(synth, 1, out=out, responses={"train": train, "test": nan}, **FAST)
    with pytest.raises(ValueError, match="responses must be None or a mapping"):
        decode(synth, 1, out=out, responses={"train": train}, **FAST)
    with pytest.raises(TypeError, match="responses must be None or a mapping"):
        decode(synth, 1, out=out, responses=[train, test], **FAST)
    with pytest.raises(ValueError, match=r"responses\['test'\] must have 2 or 3 or 4 dimensions"):
        decode(synth, 1, out=out, responses={"train": train, "test": test[..., 0, 0, 0]}, **FAST)
    with pytest.raises(ValueError, match="leave_one_subject_out reads every subject's EEG"):
        decode(
            synth, 1, out=out, responses={"train": train, "test": test}, leave_one_subject_out=True, **FAST
        )
    with pytest.raises(ValueError, match="leave_one_subject_out trains on the other subjects' EEG, but "
                       "preprocessed_data/ holds only subject 1"):  # fmt: skip
        decode(synth, 1, out=out, leave_one_subject_out=True, **FAST)
    with pytest.raises(
        ValueError, match="random_repetitions=3, but subject 1's training EEG has 2 repetitions"
    ):
        decode(synth, 1, out=out, random_repetitions=3, **FAST)
    assert not os.path.exists(out)


def test_small_gallery_and_missing_run_weights(synth: SyntheticThings, tmp_path: Any) -> None:
    root = _copy(synth, tmp_path)
    meta_path = os.path.join(root, "image_set", "image_metadata.npy")
    meta = np.load(meta_path, allow_pickle=True).item()
    np.save(meta_path, {**meta, **{k: v[:4] for k, v in meta.items() if k.startswith("test_")}})
    with pytest.raises(ValueError, match="the test gallery holds 4 images; top-5 needs at least 5"):
        decode(root, 1, out=tmp_path / "a", **FAST)
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"without the aligned weights .*model\.safetensors"):
        decode(synth, 1, out=tmp_path / "b", **{**FAST, "image_model": empty})
    parent = tmp_path / "runs"  # what align --subject all writes: the runs are its sub-XX folders
    for sub in ("sub-01", "sub-02"):
        (parent / sub).mkdir(parents=True)
        (parent / sub / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"holds the run folders sub-01, sub-02 of one align call"):
        decode(synth, 1, out=tmp_path / "c", **{**FAST, "image_model": parent})


# ------------------------------------------------------------------------------- repetitions per epoch


def test_seeded_repetition_draws_per_epoch() -> None:
    trials = np.random.default_rng(0).normal(size=(6, 5, 3, 8))
    ds = BrainImageDataset(trials, flatten=False, random_repetitions=2, seed=11, dtype=torch.float64)
    twin = BrainImageDataset(trials, flatten=False, random_repetitions=2, seed=11, dtype=torch.float64)
    draws = []
    for epoch in (1, 2, 1):
        ds.set_epoch(epoch)
        twin.set_epoch(epoch)
        picks = ds._picks
        assert picks is not None and picks.shape == (6, 2)
        assert all(len(set(row.tolist())) == 2 for row in picks)  # two distinct repetitions
        for i in range(6):
            torch.testing.assert_close(ds.response(i), torch.from_numpy(trials[i, picks[i]].mean(0)))
            torch.testing.assert_close(ds.response(i), twin.response(i))
        draws.append(picks.clone())
    assert not torch.equal(draws[0], draws[1])  # a fresh draw each epoch
    assert torch.equal(draws[0], draws[2])  # a function of (seed, epoch)
    with pytest.raises(ValueError, match="seed=3 seeds random_repetitions, which is None"):
        BrainImageDataset(trials, seed=3)
    with pytest.raises(ValueError, match="set_epoch needs random_repetitions and seed"):
        BrainImageDataset(trials, random_repetitions=2).set_epoch(1)


def test_decode_samples_repetitions_each_epoch(
    synth: SyntheticThings, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    epochs: list[int] = []
    original = BrainImageDataset.set_epoch

    def record(self: BrainImageDataset, epoch: int) -> None:
        epochs.append(epoch)
        original(self, epoch)

    monkeypatch.setattr(BrainImageDataset, "set_epoch", record)
    fast = {**FAST, "epochs": 2, "random_repetitions": 1}
    a = decode(synth, 1, out=tmp_path / "a", **fast)
    assert epochs == [0, 1, 2, 3]  # built, then each training epoch set before it starts
    b = decode(synth, 1, out=tmp_path / "b", **fast)
    _assert_same_weights(a.model, b.model)  # seeded
    averaged = decode(synth, 1, out=tmp_path / "c", **{**fast, "random_repetitions": None})
    sampled, mean = _weights(a.model), _weights(averaged.model)
    assert not all(np.array_equal(sampled[k], mean[k]) for k in sampled)  # other training data
    with open(tmp_path / "a" / "config.json") as f:
        assert json.load(f)["config"]["random_repetitions"] == 1


# ----------------------------------------------------------------------------- leave one subject out


def test_leave_one_subject_out_trains_on_the_others(aligned_runs: Any, tmp_path: Any) -> None:
    """Subject 1 held out of two: the run equals training on subject 2's EEG and testing on subject 1's."""
    root = str(aligned_runs.root)
    fast = {**FAST, "epochs": 1, "batch_size": 16}
    loso = decode(root, 1, out=tmp_path / "loso", leave_one_subject_out=True, **fast)
    arrays = {"train": _eeg(root, 2, "training"), "test": _eeg(root, 1, "test")}
    manual = decode(root, 1, out=tmp_path / "manual", responses=arrays, **fast)
    _assert_same_weights(loso.model, manual.model)
    assert loso.summary["top1"] == manual.summary["top1"]
    with open(tmp_path / "loso" / "config.json") as f:
        config = json.load(f)["config"]
    assert config["train_subjects"] == [2] and config["subject"] == 1 and config["leave_one_subject_out"]


def test_leave_one_subject_out_pools_subjects(aligned_runs: Any, tmp_path: Any) -> None:
    root = tmp_path / "three"
    for part in ("image_set", "ground_truth.npz", "preprocessed_data"):
        src = aligned_runs.root / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / part)
    shutil.copytree(root / "preprocessed_data" / "sub-02", root / "preprocessed_data" / "sub-03")
    result = decode(root, 1, out=tmp_path / "loso", leave_one_subject_out=True, **{**FAST, "epochs": 1})
    with open(tmp_path / "loso" / "config.json") as f:
        config = json.load(f)
    assert config["config"]["train_subjects"] == [2, 3]
    n_train, n_val = config["config"]["n_train"], config["config"]["n_val"]
    assert config["fit"]["train_data"]["len"] == 2 * n_train and config["fit"]["val_data"]["len"] == 2 * n_val
    assert result.summary["n_gallery"] == 30


# ------------------------------------------------------------------------------------- data-parallel

# No dropout and LayerNorm, not BatchNorm (whose statistics are each rank's), so that two processes on
# the global batch compute what one does; no validation set, so that the last epoch is selected in both.
DDP = dict(
    FAST,
    encoder="mlp",
    encoder_options=dict(hidden=32, n_blocks=1, dropout=0.0, block_dropout=0.0),
    epochs=2,
    batch_size=16,
    amp="fp32",
    val_fraction=0.0,
    patience=None,
)
WORLD = 2


def _rank(rank: int, ports: tuple[int, int], root: str, tmp: str, queue: Any) -> None:
    forked_child()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    report: dict[str, Any] = {"rank": rank}
    try:
        os.environ["MASTER_PORT"] = str(ports[0])
        result = decode(root, 1, out=os.path.join(tmp, "ddp"), **DDP)
        report.update(weights=_weights(result.model), history=result.fits[0].history)
        # 9 validation images: 5 and 4 per rank, 2 and 1 batches of 4: validation must not wait on a
        # collective that the other rank never calls
        os.environ["MASTER_PORT"] = str(ports[1])
        decode(
            root,
            1,
            out=os.path.join(tmp, "val"),
            **{**DDP, "epochs": 1, "batch_size": 8, "val_fraction": 0.07},
        )
        report["validated"] = True
    except BaseException as e:  # the parent shows it instead of waiting for a report that never comes
        report["error"] = repr(e)
    queue.put(report)


@pytest.mark.distributed
def test_two_processes_gather_negatives_like_one(synth: SyntheticThings, tmp_path: Any) -> None:
    """Under DDP each step's InfoNCE takes its negatives from the whole global batch (gathered with
    gradients) and the gradients are those of one process on that batch: the same weights, losses and
    gradient norms as one process. Local negatives, or DDP's averaging of the ranks' shares of the global
    gradient left unscaled, fail it."""
    reports = run_ranks(_rank, ((free_port(), free_port()), synth.root, str(tmp_path)), WORLD)
    assert all(r["validated"] for r in reports.values())
    single = decode(synth, 1, out=tmp_path / "single", **DDP)
    for report in reports.values():
        for key, value in _weights(single.model).items():
            # AdamW's steps of near-zero gradients magnify rounding: 1e-3 of the weights' scale
            np.testing.assert_allclose(report["weights"][key], value, rtol=1e-4, atol=2e-5, err_msg=key)
        for got, want in zip(report["history"], single.fits[0].history, strict=True):
            for k in ("train_loss", "train_grad_norm", "train_temperature"):
                assert got[k] == pytest.approx(want[k], rel=1e-5), k
    with open(tmp_path / "ddp" / "summary.json") as f:
        summary = json.load(f)
    assert summary["world_size"] == WORLD and summary["n_gallery"] == N_TEST
    assert summary["top1"] == pytest.approx(single.summary["top1"], abs=1 / N_TEST)


# ----------------------------------------------------------------------------------- what must be shown

# Measured on the shared brain (subject 1; 58 training, 6 validation and 30 test images; 32 px; 6-epoch
# runs), 6 seeds, these settings (an MLP learns from 58 images in fewer epochs than NICE): test top-1 /
# top-3 / top-5 means, chance 0.033 / 0.100 / 0.167:
#   ground-truth features      0.289 / 0.617 / 0.744
#   ReAlnet (paired) response  0.078 / 0.294 / 0.450   (top-3 and top-5 above CORnet-S's on all 6 seeds)
#   CORnet-S IT (its start)    0.056 / 0.117 / 0.233   (avgpool is the same 512 values at 32 px)
#   unpaired control response  0.067 / 0.161 / 0.328   (top-3 and top-5 below the paired head's on all 6)
SHOWN = dict(
    encoder="mlp",
    encoder_options=dict(hidden=64, n_blocks=0, dropout=0.5),
    epochs=20,
    batch_size=16,
    lr=1e-3,
    seed=[0, 1, 2],
    image_size=32,
    amp="fp32",
    progress=False,
)


@pytest.mark.slow
def test_aligned_model_beats_cornet_s_and_features_set_the_ceiling(
    aligned_runs: Any, shared_cache: Path, tmp_path: Any
) -> None:
    """What must be shown, at CI size (means over 3 seeds): the synthetic brain's true features retrieve
    the test images far above chance; the ReAlnet aligned to subject 1 (its EEG-predicting head)
    retrieves better than CORnet-S, the same start, and below that ceiling."""
    models = {
        "features": dict(image_model="features"),
        "cornet_s": dict(image_model="cornet_s", weights=aligned_runs.cornet_s, layer="IT"),
        "realnet": dict(image_model=aligned_runs.paired, layer="response"),
    }
    s = {
        name: decode(aligned_runs.root, 1, out=tmp_path / name, cache_dir=shared_cache, **SHOWN, **kw).summary
        for name, kw in models.items()
    }
    chance = s["features"]["chance"]
    assert s["features"]["n_gallery"] == 30
    assert s["features"]["top1"] >= 6 * chance["top1"], s["features"]
    for k in ("top3", "top5"):
        assert s["realnet"][k] > s["cornet_s"][k], (k, s["realnet"], s["cornet_s"])
        assert s["features"][k] > s["realnet"][k], (k, s["features"], s["realnet"])
    assert s["realnet"]["top5"] >= 1.5 * chance["top5"], s["realnet"]
    assert s["features"]["top1"] > s["realnet"]["top1"]


def test_realnet_weights_files_and_modules_are_embedded_like_run_folders(
    synth: SyntheticThings, tmp_path: Any
) -> None:
    """A ReAlnet weights file (the published encoder.pt) and a ReAlnet module are embedded at ``layer``
    (default IT) as a run folder is; embed_images takes a ReAlnet's IT block too (its forward returns
    logits and a response, no one tensor)."""
    from published_formats import encoder_state_dict

    from fastalign.data import ImageTransform, embed_images, load_image_metadata, normalize_embeddings
    from fastalign.models import realnet, save_realnet

    torch.manual_seed(0)
    net = realnet(n_out=6, image_size=32).eval()
    torch.save(encoder_state_dict(net), tmp_path / "encoder.pt")
    run = tmp_path / "run"
    save_realnet(net, run)
    with open(run / "config.json", "w") as f:
        json.dump({"config": {"subject": 1, "modality": "eeg"}, "fit": {}}, f)
    (run / "summary.json").write_text("{}")
    paths = {"test": load_image_metadata(os.path.join(synth.root, "image_set")).paths("test")[:3]}
    kw: dict[str, Any] = dict(weights=None, image_size=32, seed=0, cache_dir=None, device=torch.device("cpu"))
    want, _ = decoding._image_embeddings(str(run), synth.root, paths, layer=None, **kw)
    for spec, source in ((str(tmp_path / "encoder.pt"), "realnet weights"), (net, "realnet module")):
        got, described = decoding._image_embeddings(spec, synth.root, paths, layer=None, **kw)
        torch.testing.assert_close(got["test"], want["test"], rtol=1e-5, atol=1e-6)
        assert described.startswith(source) and described.endswith(" IT")
    response, _ = decoding._image_embeddings(net, synth.root, paths, layer="response", **kw)
    x = torch.stack([ImageTransform(32, crop=False)(p) for p in paths["test"]])
    with torch.no_grad():
        out = net(x)
    torch.testing.assert_close(response["test"], normalize_embeddings(out.response), rtol=1e-4, atol=1e-5)
    rows = embed_images(net, paths["test"], transform=ImageTransform(32, crop=False))
    with torch.no_grad():
        it = net.backbone.features(x, layers="IT")["IT"]
    np.testing.assert_allclose(rows, it.flatten(1).numpy(), rtol=1e-4, atol=1e-5)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"image_model must be a ReAlnet weights file \(\.pt, \.pth"):
        decoding._image_embeddings(str(tmp_path / "notes.txt"), synth.root, paths, layer=None, **kw)
    # files that are no ReAlnet, named as given with what was expected (and a CORnet-S told how it is taken)
    headless = str(tmp_path / "cornet_s.pth")
    torch.save({"V1.conv1.weight": torch.zeros(1)}, headless)  # a key of a CORnet-S without the head
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    for spec, words in (
        (headless, f"image_model={headless!r} holds a CORnet-S without ReAlnet's encoding head (such as the "
                   f"published backbone-only realnet.pt or the ImageNet CORnet-S); expected ReAlnet weights"),
        (headless, f"to decode with that CORnet-S, pass image_model='cornet_s', weights={headless!r} "
                   f"(--image-model cornet_s --weights {headless})"),
        (str(tmp_path / "garbage.pt"), f"image_model={str(tmp_path / 'garbage.pt')!r}: expected ReAlnet "
                                       "weights (CORnet-S and its encoding head: the published encoder.pt"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(words)):
            decoding._image_embeddings(spec, synth.root, paths, layer=None, **kw)
    for missing in (str(tmp_path / "nowhere.pt"), tmp_path / "nowhere"):  # a path, not a misspelt name
        with pytest.raises(
            FileNotFoundError, match=r"image_model='.*nowhere(\.pt)?': no such file or folder"
        ):
            decoding._image_embeddings(missing, synth.root, paths, layer=None, **kw)


@pytest.mark.parametrize("name", ["features", "cornet_s"])
def test_a_named_image_model_is_not_read_as_a_folder_of_its_name(
    name: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """image_model="features" or "cornet_s" names the model even where the working directory holds a
    folder of that name: the summary's record of the image model looked for an align run's config.json
    in it, and decode failed ("RunFolder: '.../features' has no config") after the embeddings."""
    (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    about = decoding._about(name, f"{name} (described)", 1, [1])
    assert about == {"image_model": f"{name} (described)", "subject": 1, "train_subjects": [1]}
