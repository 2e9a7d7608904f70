"""fastalign.train.decoding: the NICE / AlignVis decoding recipe on a small synthetic brain."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fastalign.data import SyntheticThings, make_synthetic_things
from fastalign.train.decoding import Decoder, decode

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
    result = decode(synth, 1, out=out, **FAST)
    assert {"config.json", "metrics.jsonl", "model.safetensors", "summary.json"} <= set(os.listdir(out))
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary == result.summary
    assert {"top1", "top3", "top5", "n_gallery", "chance", "temperature", "best_epoch"} <= set(summary)
    assert summary["n_gallery"] == N_TEST
    assert summary["chance"] == {"top1": 1 / N_TEST, "top3": 3 / N_TEST, "top5": 5 / N_TEST}
    assert 0 <= summary["top1"] <= summary["top3"] <= summary["top5"] <= 1
    with open(out / "config.json") as f:
        config = json.load(f)["config"]
    assert config["learn_temperature"] is True and config["n_test"] == N_TEST and config["n_val"] == 13
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


def test_ground_truth_features_retrieve_far_above_chance(synth: SyntheticThings, tmp_path: Any) -> None:
    """What must be shown, at CI size: the synthetic brain's true features as the image model (the
    ceiling) are retrieved from held-out EEG far above chance (20-way: 5% top-1, 25% top-5)."""
    result = decode(synth, 1, out=tmp_path / "run", **{**FAST, "epochs": 20})
    s = result.summary
    assert s["top1"] >= 4 * s["chance"]["top1"], s
    assert s["top5"] >= 2 * s["chance"]["top5"], s


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
    with open(tmp_path / "runs" / "summary.json") as f:
        assert json.load(f) == s


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
    with pytest.raises(ValueError, match="encoder"):
        decode(synth, 1, out=tmp_path / "a", **FAST, encoder="transformer")
    with pytest.raises(ValueError, match="subject 2"):
        decode(synth, 2, out=tmp_path / "a", **FAST)
    for name in ("epochs", "batch_size"):
        with pytest.raises(ValueError, match=name):
            decode(synth, 1, out=tmp_path / "a", **{**FAST, name: 0})
    with pytest.raises(ValueError, match="temperature"):
        decode(synth, 1, out=tmp_path / "a", **FAST, temperature=0.0)


def _copy(synth: SyntheticThings, tmp_path: Any) -> str:
    root = str(tmp_path / "copy")
    shutil.copytree(synth.root, root, ignore=shutil.ignore_patterns("raw_data", "fmri", "embeddings"))
    return root


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
