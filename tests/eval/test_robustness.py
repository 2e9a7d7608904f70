"""FGSM and PGD on their defining properties, the accuracy curves, and the labelled image folder."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import warnings
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_helpers import Tiny
from torch import nn

import fastalign.eval as fe
from fastalign.data import SyntheticThings
from fastalign.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fastalign.eval.attacks import (
    DEFAULT_EPS,
    ROBUSTNESS_COLUMNS,
    fgsm,
    load_labelled_images,
    pgd,
    robustness,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # the tensors here are tiny: OpenMP threads only add synchronisation, which on a busy machine costs
    # seconds per attack
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)


def _cnn(seed: int = 0, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, classes),
    ).double()
    with torch.no_grad():  # running statistics far from any batch's, so eval and train modes disagree
        model[1].running_mean.fill_(0.5)
        model[1].running_var.fill_(4.0)
    return model


def _images(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 6, 6, generator=g, dtype=torch.float64)
    x[:, 0, 0, :] = 0.0  # pixels on the edges of the valid range, where FGSM must clip
    x[:, 1, 0, :] = 1.0
    return x, torch.randint(0, 5, (n,), generator=g)


def _grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    model.eval()
    loss = F.cross_entropy(model((x - MEAN) / STD), y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]


def _clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model((x - MEAN) / STD).argmax(1) == y).double().mean())


def test_fgsm_moves_every_pixel_by_eps_in_the_gradient_sign_clipped() -> None:
    model, (x, y), eps = _cnn(), _images(), 4 / 255
    adv = fgsm(model, x, y, eps)
    sign = _grad(model, x, y).sign()
    assert torch.equal(adv, (x + eps * sign).clamp(0, 1))
    moved = (sign != 0) & ((x + eps * sign) >= 0) & ((x + eps * sign) <= 1)
    assert moved.float().mean() > 0.5
    torch.testing.assert_close((adv - x)[moved], eps * sign[moved], atol=1e-15, rtol=0)
    assert torch.equal(adv[sign == 0], x[sign == 0])
    clipped = ((x + eps * sign) < 0) | ((x + eps * sign) > 1)
    assert clipped.any() and bool(((adv[clipped] == 0) | (adv[clipped] == 1)).all())


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_eps_zero_changes_nothing(attack: str) -> None:
    model, (x, y) = _cnn(), _images()
    adv = fgsm(model, x, y, 0.0) if attack == "fgsm" else pgd(model, x, y, 0.0, steps=3)
    assert torch.equal(adv, x)


@pytest.mark.parametrize("eps", [1 / 255, 8 / 255, 0.3])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_stays_in_the_eps_ball_and_the_valid_range(eps: float, random_start: bool) -> None:
    model, (x, y) = _cnn(), _images()
    adv = pgd(model, x, y, eps, steps=5, step_size=eps, random_start=random_start, seed=3)
    assert float((adv - x).abs().max()) <= eps * (1 + 1e-12)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    ce = lambda z: F.cross_entropy(model.eval()((z - MEAN) / STD), y)
    with torch.no_grad():
        assert ce(adv) > ce(x)


def test_pgd_is_deterministic_with_a_seed_and_uses_its_random_start() -> None:
    model, (x, y), eps = _cnn(), _images(), 4 / 255
    a = pgd(model, x, y, eps, steps=1, step_size=1e-9, seed=0)
    assert torch.equal(a, pgd(model, x, y, eps, steps=1, step_size=1e-9, seed=0))
    assert not torch.equal(a, pgd(model, x, y, eps, steps=1, step_size=1e-9, seed=1))
    # the start is uniform in the ball: with a negligible step, the perturbation spreads over (-eps, eps)
    d = (a - x)[(x > eps) & (x < 1 - eps)]
    assert float(d.abs().max()) > 0.9 * eps and abs(float(d.mean())) < 0.2 * eps


def _linear_problem(n: int = 40) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 2-class linear model on normalised pixels, images away from the range's edges, and K with
    ``margin(x + delta) >= margin(x) - eps * K`` for every ``|delta| <= eps``, equality at the corner."""
    g = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, 48, generator=g, dtype=torch.float64) * 0.05)
        model[1].bias.zero_()
    x = 0.1 + 0.8 * torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=g)
    dw = (model[1].weight[1] - model[1].weight[0]).detach().view(3, 4, 4)
    return model, x, y, dw


def _margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model((x - MEAN) / STD)
    return logits.gather(1, y[:, None])[:, 0] - logits.gather(1, 1 - y[:, None])[:, 0]


@pytest.mark.filterwarnings("ignore:robustness.*at or below chance")  # random labels
@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_a_linear_model_is_attacked_to_its_analytic_worst_case(attack: str) -> None:
    model, x, y, dw = _linear_problem()
    k = float((dw.abs() / STD[0]).sum())
    eps = 4 / 255
    # the worst case in the L-inf ball moves every pixel by eps against the true class's margin
    corner = x + eps * torch.where(y[:, None, None, None] == 0, dw.sign(), -dw.sign())
    adv = fgsm(model, x, y, eps) if attack == "fgsm" else pgd(model, x, y, eps, steps=10, seed=0)
    torch.testing.assert_close(adv, corner, atol=1e-15, rtol=0)
    torch.testing.assert_close(
        _margins(model, adv, y), _margins(model, x, y) - eps * k, rtol=1e-12, atol=1e-12
    )
    rows = robustness({"linear": model}, x, y, eps=(0.0, 1 / 255, eps), attacks=(attack,), batch_size=7)
    margins = _margins(model, x, y)
    assert ((margins > 0) & (margins < eps * k)).any() and (margins > eps * k).any()
    for row in rows:
        assert row["accuracy"] == pytest.approx(float((margins > row["eps"] * k).double().mean()), abs=1e-12)


class _Scale(nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.k * z


@pytest.mark.parametrize("scale", [1e3, 1e6])
def test_a_confident_model_is_attacked_as_its_cross_entropy_says(scale: float) -> None:
    """Scaling the logits changes no prediction and not the sign of the cross-entropy's gradient. Taken
    through softmax in float32, that gradient lost the true class's term once the margin passed ~17 and
    was exactly 0 beyond ~100: the scaled model looked robust (FGSM moved nothing)."""
    model, x, y, _ = _linear_problem()
    y = (_margins(model, x, torch.zeros_like(y)) < 0).long()  # every image right
    assert float(scale * _margins(model, x, y).median()) > 100
    model, x = model.float(), x.float()
    confident = nn.Sequential(model, _Scale(scale))
    for attack in (fgsm, pgd):
        assert torch.equal(attack(confident, x, y, 4 / 255), attack(model, x, y, 4 / 255))
    eps = (0.0, 4 / 255, 32 / 255)
    rows = robustness({"m": confident}, x, y, eps=eps, steps=3, batch_size=16)
    assert [r["accuracy"] for r in rows] == [
        r["accuracy"] for r in robustness({"m": model}, x, y, eps=eps, steps=3, batch_size=16)
    ]
    assert max(r["accuracy"] for r in rows if r["eps"] == 32 / 255) < 0.05  # from 1.0 at eps 0
    assert [r["zero_gradient"] for r in rows if r["eps"] > 0] == [0.0] * 4


class _Rounded(nn.Module):
    """A model whose input gradient is exactly 0 everywhere: its input is quantised."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(z * 4) / 4)


def test_an_input_gradient_of_exactly_zero_is_recorded_and_warned_about() -> None:
    model, x, y, _ = _linear_problem(n=10)
    model = _Rounded(model)
    y = model.eval()((x - MEAN) / STD).argmax(1).detach()
    eps = (0.0, 8 / 255)
    with pytest.warns(UserWarning, match=r"robustness: model 'q' had an input gradient of exactly 0 .*"
                      r"fgsm eps 8/255: 100.0%, pgd eps 8/255: 100.0%"):  # fmt: skip
        rows = robustness({"q": model}, x, y, eps=eps, steps=2)
    assert [(r["attack"], r["eps"], r["n_images"]) for r in rows] == [
        (a, e, 10) for a in ("fgsm", "pgd") for e in eps
    ]
    assert math.isnan(rows[0]["zero_gradient"]) and rows[1]["zero_gradient"] == 1.0
    assert rows[1]["accuracy"] == rows[0]["accuracy"]  # FGSM moved nothing: the mask at work


def test_pgd_rows_depend_on_neither_the_other_eps_their_order_nor_the_batch_size() -> None:
    """Each image's random start comes from (seed, eps, image index): a row is pgd()'s accuracy on all
    the images at once, whatever else the call holds. One generator consumed across eps and batches
    made a row depend on the eps before it and on the batch size."""
    model, x, y, _ = _linear_problem()
    y = (_margins(model, x, torch.zeros_like(y)) < 0).long()  # every image right
    opts = {"steps": 1, "step_size": 1e-6, "seed": 4}  # the random start decides
    want = {e: _clean_accuracy(model, pgd(model, x, y, e, **opts), y) for e in (0.2, 0.3)}
    assert 0 < min(want.values()) and max(want.values()) < 1
    for eps, batch_size, attacks in (
        ((0.0, 0.2, 0.3), 40, ("pgd",)),
        ((0.0, 0.3, 0.2), 7, ("pgd",)),
        ((0.0, 0.3), 1, ("fgsm", "pgd")),
    ):
        rows = robustness({"m": model}, x, y, eps=eps, attacks=attacks, batch_size=batch_size, **opts)
        got = {r["eps"]: r["accuracy"] for r in rows if r["attack"] == "pgd" and r["eps"] > 0}
        assert got == {e: want[e] for e in got}


def test_robustness_rows_clean_accuracy_relative_accuracy_and_batching() -> None:
    models = {"a": _cnn(0), "b": _cnn(1)}
    x, y = _images(n=9)
    with torch.no_grad():  # most images right at eps 0, so that the attacks have work to do
        y[:5] = models["a"].eval()((x[:5] - MEAN) / STD).argmax(1)
        y[5:] = models["b"].eval()((x[5:] - MEAN) / STD).argmax(1)
    eps = (0.0, 0.5, 0.02, 0.1)
    rows = robustness(models, x, y, eps=eps, batch_size=4, steps=2, random_start=False)
    assert [tuple(r) for r in rows] == [ROBUSTNESS_COLUMNS] * 16
    assert [(r["model"], r["attack"], r["eps"]) for r in rows[:5]] == [("a", "fgsm", e) for e in eps] + [
        ("a", "pgd", 0.0)
    ]
    for r in rows:
        clean = _clean_accuracy(models[r["model"]], x, y)
        if r["eps"] == 0:
            assert r["accuracy"] == clean
        assert 0 < clean < 1 and r["relative_accuracy"] == pytest.approx(r["accuracy"] / clean)
    assert min(r["accuracy"] for r in rows) < max(r["accuracy"] for r in rows)
    assert rows == robustness(models, x, y, eps=eps, batch_size=1, steps=2, random_start=False)


def test_fgsm_takes_one_gradient_per_batch_for_every_eps_and_the_clean_accuracy() -> None:
    """FGSM's gradient at the images does not depend on eps, and its forward classifies the clean images:
    per batch one forward with its backward, then one forward per eps > 0 (a CORnet-S pass costs seconds
    on a CPU). The rows are those of fgsm() at each eps."""
    model, (x, y) = _cnn(), _images(n=6)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    eps = (0.0, 0.02, 0.1, 0.5)
    rows = robustness({"m": model}, x, y, eps=eps, attacks=("fgsm",), batch_size=4)
    assert len(calls) == 2 * (1 + 3)  # 2 batches: the gradient's forward and one per eps > 0
    calls.clear()
    clean = robustness({"m": model}, x, y, eps=(0.0,), attacks=("fgsm",), batch_size=4)
    assert len(calls) == 2 and clean == rows[:1]  # no attack, no gradient: one forward per batch
    model.eval()
    for r in rows:
        with torch.no_grad():
            adv = fgsm(model, x, y, r["eps"])
            assert r["accuracy"] == float((model((adv - MEAN) / STD).argmax(1) == y).double().mean())


def test_relative_accuracy_is_nan_without_a_clean_success() -> None:
    model, (x, _) = _cnn(), _images()
    with torch.no_grad():
        wrong = (model.eval()((x - MEAN) / STD).argmax(1) + 1) % 5
    with pytest.warns(UserWarning, match=r"'m' classifies 0.0% .* at or below chance \(1/5 classes\)"):
        rows = robustness({"m": model}, x, wrong, eps=(0.0, 0.1), attacks=("fgsm",))
    assert [r["accuracy"] for r in rows] == [0.0, 0.0]
    assert all(math.isnan(r["relative_accuracy"]) for r in rows)


def test_default_eps_is_0_to_8_grey_levels() -> None:
    assert [round(e * 255, 9) for e in DEFAULT_EPS] == [0, 1, 2, 4, 8]


class _Out(NamedTuple):
    logits: torch.Tensor
    response: torch.Tensor


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _cnn()

    def forward(self, x: torch.Tensor) -> _Out:
        logits = self.net(x)
        return _Out(logits, logits.sum(1, keepdim=True))


def test_models_returning_logits_and_a_response_are_attacked_on_the_logits() -> None:
    model, (x, y) = _TwoHeads(), _images()
    assert torch.equal(fgsm(model, x, y, 2 / 255), fgsm(model.net, x, y, 2 / 255))


def test_attacks_run_in_eval_mode_and_leave_batchnorm_and_training_flags_alone() -> None:
    model, (x, y) = _cnn(), _images()
    model.train()
    model[5].eval()  # a mixed state, restored module by module
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fgsm(model, x, y, 2 / 255)
    pgd(model, x, y, 2 / 255, steps=2)
    rows = robustness({"m": model}, x, y, eps=(0.0, 2 / 255), steps=2)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == [True] * 6 + [False]
    assert all(p.grad is None for p in model.parameters())
    # in train mode BatchNorm would use batch statistics: eps 0 must match the eval-mode accuracy
    with torch.no_grad():
        train_mode_acc = float((model((x - MEAN) / STD).argmax(1) == y).double().mean())
    assert rows[0]["accuracy"] == _clean_accuracy(model, x, y) != train_mode_acc


def test_models_taking_pixels_without_normalisation() -> None:
    model, (x, y) = _cnn(), _images()
    xr = x.clone().requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(model.eval()(xr), y, reduction="sum"), xr)[0]
    adv = fgsm(model, x, y, 3 / 255, mean=None, std=None)
    assert torch.equal(adv, (x + 3 / 255 * g.sign()).clamp(0, 1))


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"eps": (0.0, -1 / 255)}, ValueError, "robustness: eps must be a number in [0, 1]"),
        ({"eps": (0.0, 0.0)}, ValueError, "robustness: eps must not repeat"),
        ({"eps": ()}, TypeError, "robustness: eps must be a non-empty sequence"),
        ({"attacks": ("fgsm", "cw")}, ValueError, "robustness: attacks must be one of ('fgsm', 'pgd')"),
        ({"attacks": "pgd"}, TypeError, "robustness: attacks must be a non-empty sequence"),
        ({"steps": 0}, ValueError, "robustness: steps must be an int >= 1"),
        ({"batch_size": 1.5}, TypeError, "robustness: batch_size must be an int"),
        ({"mean": (0.5, 0.5)}, ValueError, "robustness: mean must be 3 finite numbers"),
        ({"mean": (0.5, 0.5)}, ValueError, "pass mean= and std= of 3 values each (or both None"),
        ({"std": None}, ValueError, "robustness: mean and std must both be given or both be None"),
    ],
)
def test_bad_options_are_refused(kwargs: dict, error: type, words: str) -> None:
    x, y = _images(n=2)
    with pytest.raises(error, match=re.escape(words)):
        robustness({"m": _cnn()}, x, y, **kwargs)


def test_bad_inputs_are_refused() -> None:
    model, (x, y) = _cnn(), _images(n=2)
    with pytest.raises(
        ValueError, match=r"robustness: images must be pixels in \[0, 1\] before normalisation"
    ):
        robustness({"m": model}, (x - MEAN) / STD, y)
    with pytest.raises(ValueError, match="robustness: labels must be < the model's 5 classes, got 7"):
        robustness({"m": model}, x, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        robustness({"m": model}, x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        robustness({"m": model}, x, y.double())
    with pytest.raises(TypeError, match=r"robustness: models\['m'\] must be a torch.nn.Module"):
        robustness({"m": lambda t: t}, x, y)
    with pytest.raises(TypeError, match="robustness: models must be a non-empty dict"):
        robustness({}, x, y)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"fgsm: eps must be a number in \[0, 1\] \(L-infinity, of "):
            fgsm(model, x, y, bad)
    with pytest.raises(
        ValueError, match=r"robustness: eps must include 0, the clean accuracy .* got \[0.1\]"
    ):
        robustness({"m": model}, x, y, eps=[0.1])
    with pytest.raises(TypeError, match="fgsm: the model must return logits"):
        fgsm(nn.Flatten(0), x, y, 0.1)
    with pytest.raises(ValueError, match=r"robustness: mean must be 1 finite .* pass mean= and std= of 1"):
        robustness({"m": nn.Sequential(nn.Flatten(), nn.Linear(36, 2))}, x[:, :1], torch.tensor([0, 1]))


def test_eps_beyond_half_the_pixel_range_is_warned_about() -> None:
    model, (x, y) = _cnn(), _images(n=2)
    with pytest.warns(UserWarning, match=r"robustness: eps \[0.75\] exceed 0.5, half the pixel range"):
        robustness({"m": model}, x, y, eps=(0.0, 0.5, 0.75), attacks=("fgsm",))
    with pytest.warns(UserWarning, match=r"pgd: eps \[1.0\] exceed 0.5"):
        pgd(model, x, y, 1.0, steps=1)


def _png(path: str, value: int) -> None:
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_load_labelled_images_folder_per_class(tmp_path: os.PathLike) -> None:
    root = str(tmp_path)
    for cls, values in (("n02", (10, 20)), ("n01", (30,))):
        os.makedirs(os.path.join(root, cls))
        for i, v in enumerate(values):
            _png(os.path.join(root, cls, f"{i}.PNG"), v)
    open(os.path.join(root, "n01", "notes.txt"), "w").close()
    os.makedirs(os.path.join(root, ".cache"))
    got = load_labelled_images(root, size=8, resize=8)
    assert got.classes == ["n01", "n02"]
    assert got.labels.tolist() == [0, 1, 1]
    assert [os.path.relpath(p, root) for p in got.paths] == ["n01/0.PNG", "n02/0.PNG", "n02/1.PNG"]
    assert got.images.shape == (3, 3, 8, 8)
    torch.testing.assert_close(got.images[:, 0, 0, 0], torch.tensor([30, 10, 20]) / 255.0)
    mapped = load_labelled_images(root, class_index={"n01": 207, "n02": 3}, size=8, resize=8)
    assert mapped.labels.tolist() == [207, 3, 3]
    with pytest.raises(ValueError, match=r"load_labelled_images: class_index has no entry for .*'n02'"):
        load_labelled_images(root, class_index={"n01": 0}, size=8, resize=8)
    numbered = os.path.join(root, "numbered")
    for cls in ("10", "9"):  # by their names, not their sorted position ("10" < "9")
        os.makedirs(os.path.join(numbered, cls, "nested"))
        _png(os.path.join(numbered, cls, "0.png"), 40)
        _png(os.path.join(numbered, cls, "nested", "1.png"), 40)
    with pytest.warns(UserWarning, match=r"2 sub-folder\(s\) inside class folders .* skipped .* '10/nested'"):
        got = load_labelled_images(numbered, size=8, resize=8)
    assert got.classes == ["10", "9"] and got.labels.tolist() == [10, 9]
    with pytest.raises(FileNotFoundError, match="load_labelled_images: root"):
        load_labelled_images(os.path.join(root, "missing"))
    empty = os.path.join(root, "empty")
    os.makedirs(os.path.join(empty, "cls"))
    with pytest.raises(ValueError, match=r"load_labelled_images: the class folders of .* hold no images"):
        load_labelled_images(empty)


def test_robustness_is_part_of_the_evaluation(eval_things: SyntheticThings, tmp_path) -> None:
    """robustness= attacks every model of the evaluation (a family's members as rows of their own) with
    the settings given, exactly as fastalign.eval.robustness does, writes robustness.csv and records the
    settings; they are checked before anything runs."""
    folder = tmp_path / "labelled"
    for k, path in enumerate(fe.load_brain(eval_things).images[:4]):
        (folder / "ab"[k % 2]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / "ab"[k % 2])
    family = [fe.EvalModel("fam", Tiny(s), layers=["conv"], subject=s, modality="eeg") for s in (1, 2)]
    models = [fe.EvalModel("tiny", Tiny(0), layers=["conv"]), *family]
    settings = dict(eps=(0.0, 0.1), attacks=("fgsm", "pgd"), pgd_steps=2, pgd_step_size=0.03)
    res = fe.evaluate(eval_things, models, out=tmp_path / "out", image_size=24, permutations=10,
                      robustness=folder, class_index={"a": 3, "b": 1}, **settings)  # fmt: skip
    images = fe.load_labelled_images(folder, class_index={"a": 3, "b": 1}, size=24)
    want = fe.robustness({"tiny": models[0].module, "fam/sub-01": models[1].module,
                          "fam/sub-02": models[2].module}, images.images, images.labels, steps=2,
                         step_size=0.03, eps=settings["eps"], attacks=settings["attacks"])  # fmt: skip
    assert res.robustness == want and len(want) == 3 * 2 * 2
    with open(os.path.join(tmp_path, "out", "robustness.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["attack"], float(r["eps"])) for r in rows] == [
        (r["model"], r["attack"], r["eps"]) for r in want
    ]
    top = res.summary["robustness"]["fam/sub-02"]
    assert (top["model"], top["model_subject"], top["eps"]) == ("fam", "sub-02", 0.1)
    assert top["relative_accuracy"] == {r["attack"]: r["relative_accuracy"] for r in want
                                        if r["model"] == "fam/sub-02" and r["eps"] == 0.1}  # fmt: skip
    with open(os.path.join(tmp_path, "out", "config.json")) as f:
        assert json.load(f)["robustness"]["pgd_steps"] == 2
    # eps beyond half the pixel range: said once by evaluate, not again by each model's attacks
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fe.evaluate(eval_things, models, out=None, image_size=24, permutations=10, robustness=folder,
                    class_index={"a": 3, "b": 1}, eps=(0.0, 0.6), attacks=("fgsm",))  # fmt: skip
    large = [str(w.message) for w in caught if "exceed 0.5" in str(w.message)]
    assert large == ["evaluate: eps [0.6] exceed 0.5, half the pixel range (eps is in [0, 1] pixel units: "
                     "four grey levels are 4/255)"], large  # fmt: skip

    # labels that are not the models' class indices are refused after one forward pass on one image,
    # before any features or statistics
    for class_index, match in (
        (None, r"the robustness image folder must have one class folder per class of model 'tiny' \(5\) "
               r"when no class index is given, got 2 folders .* pass class_index=\{folder: class index\} "
               r"\(--class-index FILE.json"),
        ({"a": 3, "b": 7}, r"the robustness labels must be < the 5 classes of model 'tiny', got 7"),
    ):  # fmt: skip
        tiny = fe.EvalModel("tiny", Tiny(0), layers=["conv"])
        with pytest.raises(ValueError, match=f"^evaluate: {match}"):
            fe.evaluate(eval_things, [tiny], out=None, image_size=24, robustness=folder,
                        class_index=class_index, **settings)  # fmt: skip
        assert tiny.module.calls == 1

    truth = fe.EvalModel("truth", features={"features": eval_things.ground_truth["test_features"]})
    for kwargs, match in (
        ({"robustness": folder, "eps": (0.0, -1 / 255)}, r"eps must be a number in \[0, 1\] .* got -0\.0039"),
        (
            {"eps": (0.0, 1 / 255)},
            r"eps \(--eps\) set the robustness evaluation, which runs only with "
            "robustness=",
        ),
        ({"robustness": folder}, r"robustness attacks each model, but \['truth'\] are precomputed features"),
    ):
        with pytest.raises(ValueError, match=f"^evaluate: {match}"):
            fe.evaluate(eval_things, [truth], out=None, **kwargs)
