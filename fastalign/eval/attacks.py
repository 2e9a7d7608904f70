"""Adversarial robustness: FGSM and PGD (L-infinity) accuracy curves, in pixel space.

The attacks perturb images in [0, 1] pixel space, before the ImageNet normalisation, which is applied
inside the attacked function (``mean``/``std``; :data:`fastalign.data.transforms.IMAGENET_MEAN` and
``IMAGENET_STD`` by default), so ``eps = 4/255`` means four grey levels of an 8-bit image whatever the
model's input scaling. Both maximise the cross-entropy (CE) of the true label, following the sign of its
input gradient. That sign is taken from ``logsumexp_{j != y}(z_j - z_y)`` in float64, a monotone function
of CE (``CE = log(1 + exp(.))``) whose per-image gradient has CE's direction without its saturation:
through softmax in float32, CE's gradient loses the true class's term once the margin passes ~17 and is
exactly 0 beyond ~100, so that a confident model looked robust.

- FGSM (Goodfellow et al. 2015): ``x' = clip(x + eps * sign(grad_x loss), 0, 1)``; every pixel moves by
  exactly ``eps`` in the direction of its gradient's sign (not at all where the gradient is 0), then the
  result is clipped to the valid range.
- PGD (Madry et al. 2018): from a uniform random start in the eps ball (``random_start``), ``steps``
  signed-gradient steps of ``step_size`` (default ``2.5 * eps / steps``, Madry's rule, so that the walk
  can cross the ball from any start), each followed by projection onto the eps ball around ``x`` and
  onto [0, 1]. The last iterate is returned.

Models are attacked in eval mode (dropout off, BatchNorm using and never updating its running
statistics); each module's own training flag is restored afterwards. Gradients are taken with respect to
the images only (``torch.autograd.grad``), so no parameter's ``.grad`` is touched. A model may return
logits (B, classes) or an object with a ``logits`` attribute (:class:`fastalign.models.ReAlnet` returns
``(logits, response)``).

Each image's random start is drawn on the CPU from a generator seeded with a hash of (``seed``, eps, the
image's index), so a result depends on neither the batch size nor the other eps, attacks or models, and
the same seed gives the same starts on any device (and the same adversarial images on the CPU; cuDNN's
convolution gradients may differ in the last bits on a GPU). :func:`robustness` records per attack and
eps the share of images whose input gradient was exactly 0 at the first step (``zero_gradient``), and
warns when it is above 0: gradient masking, which the attacks cannot see past.

No attack library is used: torchattacks needs torchvision, which has no build for the pinned CPU torch;
adversarial-robustness-toolbox and foolbox install without torch but draw PGD's random start from the
process-global numpy / torch random state (no per-call seed), ART round-trips every batch through numpy
on the host, and foolbox imports GitPython at import time for its model zoo; advertorch (last release
2020) imports torchvision. The two attacks are a few lines each and are tested on their defining
properties.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from fastalign import _checks
from fastalign._modes import eval_mode
from fastalign.data.images import ImageTransform
from fastalign.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fastalign.eval.progress import Stage

#: Default perturbation sizes (L-infinity, in [0, 1] pixel units): 0, 1, 2, 4 and 8 grey levels of 255.
DEFAULT_EPS: tuple[float, ...] = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)

#: The attacks :func:`robustness` runs.
ATTACKS: tuple[str, ...] = ("fgsm", "pgd")

#: Columns of the rows :func:`robustness` returns (robustness.csv).
ROBUSTNESS_COLUMNS: tuple[str, ...] = (
    "model", "attack", "eps", "accuracy", "relative_accuracy", "zero_gradient", "n_images",
)  # fmt: skip

#: Image file extensions :func:`load_labelled_images` reads (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)

Norm = Sequence[float] | None


# ---------------------------------------------------------------------------------------------- checks


def _check_images(fn: str, images: Any) -> torch.Tensor:
    images = _checks.check_tensor(fn, "images", images, shape="(N, C, H, W)")
    _checks.check_floating(fn, "images", images, expected="a floating-point tensor of pixels in [0, 1]")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"{fn}: images must have shape (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{fn}: images must be finite pixels in [0, 1], got NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{fn}: images must be pixels in [0, 1] before normalisation, got values in [{lo:.4g}, {hi:.4g}]"
            " (the attacks normalise inside; load images with ImageTransform(normalize=False))"
        )
    return images


def _check_labels(fn: str, labels: Any, n: int) -> torch.Tensor:
    labels = _checks.check_tensor(fn, "labels", labels, shape="(N,)")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{fn}: labels must be an integer tensor of class indices, got dtype {labels.dtype}")
    _checks.check_shape(fn, "labels", labels, (n,), doc=f"({n},) (one per image)")
    if n and int(labels.min()) < 0:
        raise ValueError(f"{fn}: labels must be class indices >= 0, got {int(labels.min())}")
    return labels.long()


_EPS_RANGE = "a number in [0, 1] (L-infinity, of pixels in [0, 1])"


def _check_eps(fn: str, eps: Any) -> float:
    """A perturbation size: pixels are in [0, 1], so a step beyond 1 is no perturbation of an image."""
    value = _checks.check_real(fn, "eps", eps, expected=_EPS_RANGE)
    if not 0 <= value <= 1:
        raise ValueError(_checks.message(fn, "eps", _EPS_RANGE, eps))
    return value


def _warn_large_eps(fn: str, values: Sequence[float]) -> None:
    """eps beyond half the pixel range is more likely grey levels meant as 1/255 than an attack size."""
    large = [v for v in values if v > 0.5]
    if large:
        warnings.warn(
            f"{fn}: eps {large} exceed 0.5, half the pixel range (eps is in [0, 1] pixel units: four grey "
            "levels are 4/255)",
            UserWarning,
            stacklevel=3,
        )


def _check_norm(fn: str, mean: Norm, std: Norm, channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean, std) as float64 (C,) tensors, or None for models that take [0, 1] pixels."""
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError(
            f"{fn}: mean and std must both be given or both be None, got mean={mean!r}, std={std!r}"
        )
    out = []
    for name, value in (("mean", mean), ("std", std)):
        expected = f"{channels} finite numbers (one per image channel)"
        try:
            t = torch.as_tensor(value).detach().to("cpu", torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(_checks.message(fn, name, expected, value)) from err
        if t.numel() != channels or not bool(torch.isfinite(t).all()):
            hint = ""
            if t.numel() != channels:  # the ImageNet default, of 3 channels, for grey or other images
                hint = f"; pass mean= and std= of {channels} values each (or both None for [0, 1] input)"
            raise ValueError(f"{fn}: {name} must be {expected}, got {value!r}{hint}")
        out.append(t)
    if bool((out[1] <= 0).any()):
        raise ValueError(f"{fn}: std must be > 0 for every channel, got {std!r}")
    return out[0], out[1]


def _check_model(fn: str, name: str, model: Any) -> torch.nn.Module:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(_checks.message(fn, name, "a torch.nn.Module", model))
    return model


# ---------------------------------------------------------------------------------------------- core


def _device(model: torch.nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def _dtype(model: torch.nn.Module, fallback: torch.dtype) -> torch.dtype:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return fallback


def _logits(fn: str, model: torch.nn.Module, x: torch.Tensor, norm: Any) -> torch.Tensor:
    """Logits of pixel images ``x``, normalised inside so that gradients are in pixel space."""
    if norm is not None:
        mean, std = (t.to(x.device, x.dtype).view(1, -1, 1, 1) for t in norm)
        x = (x - mean) / std
    out = model(x)
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise TypeError(
            f"{fn}: the model must return logits of shape (B, classes) or an object with a `logits` "
            f"attribute of that shape, got {type(out).__name__}"
        )
    return logits


def _ascent_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image ``log(exp(CE) - 1) = logsumexp_{j != y}(z_j - z_y)``, in float64: a monotone function of
    the cross-entropy ``CE = log(1 + exp(.))``, so its input gradient has CE's sign pixel for pixel.

    CE's own gradient is ``sigmoid(.)`` times this one. Computed through softmax it loses the true
    class's term (``p_y - 1`` rounds to 0) once the margin exceeds ~17 in float32 (~37 in float64),
    and underflows to exactly 0 beyond ~100 (~745), so that a confident model looked robust.
    """
    z = logits.to(torch.float64)
    true = z.gather(1, labels[:, None])
    others = (z - true).scatter(1, labels[:, None], -math.inf)
    return torch.logsumexp(others, dim=1)


def _loss_grad(
    fn: str, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, norm: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient with respect to ``x`` of the summed per-image ascent loss (the direction of the
    cross-entropy's, see :func:`_ascent_loss`), and the logits at ``x``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = _logits(fn, model, x, norm)
        if int(labels.max()) >= logits.shape[1]:
            raise ValueError(
                f"{fn}: labels must be < the model's {logits.shape[1]} classes, got {int(labels.max())}"
            )
        if logits.shape[1] < 2:
            raise ValueError(f"{fn}: the model must return logits of 2 or more classes, got 1")
        # summed, so that each image's gradient is that of its own loss whatever the batch holds
        loss = _ascent_loss(logits, labels).sum()
        if not loss.requires_grad:
            raise ValueError(
                f"{fn}: the model's output does not depend differentiably on its input (an inference-only "
                "model such as FusedCORnetS, or torch.no_grad inside forward); attack the eager model"
            )
        (grad,) = torch.autograd.grad(loss, x)
    return grad, logits.detach()


def _fgsm_step(x: torch.Tensor, grad: torch.Tensor, eps: float) -> torch.Tensor:
    return (x + eps * grad.sign()).clamp_(0.0, 1.0)


def _n_zero(grad: torch.Tensor) -> int:
    """How many images' input gradients are exactly 0 everywhere (the attack cannot move them)."""
    return int((grad.flatten(1) == 0).all(1).sum())


class _PGDOptions(NamedTuple):
    steps: int
    step_size: float | None  # None: 2.5 * eps / steps
    random_start: bool


def _start_seed(seed: int, eps: float, index: int) -> int:
    """The seed of one image's random start: a hash of (seed, eps, image index), so that a start depends
    on nothing else (not the other eps, their order, the batch size or the other models)."""
    key = f"{seed}|{float(eps).hex()}|{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def _random_start(shape: torch.Size, seed: int, eps: float, first: int) -> torch.Tensor:
    """Uniform noise in [-1, 1) for images ``first, first + 1, ...``, drawn on the CPU in float64 so that
    every device and dtype starts from the same points."""
    noise = torch.empty(shape, dtype=torch.float64)
    g = torch.Generator()
    for k in range(shape[0]):
        g.manual_seed(_start_seed(seed, eps, first + k))
        noise[k] = torch.rand(shape[1:], generator=g, dtype=torch.float64)
    return noise * 2 - 1


def _pgd(
    fn: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: Any,
    opts: _PGDOptions,
    seed: int,
    first: int = 0,
) -> tuple[torch.Tensor, int]:
    """The adversarial images, and how many had an input gradient of exactly 0 at the first step.
    ``first`` is the index of ``x[0]`` among all the images (it picks the random starts)."""
    lo, hi = (x - eps).clamp_(0.0, 1.0), (x + eps).clamp_(0.0, 1.0)
    adv = x.clone()
    if opts.random_start:
        noise = _random_start(x.shape, seed, eps, first)
        adv = torch.maximum(torch.minimum(x + (noise * eps).to(x.device, x.dtype), hi), lo)
    alpha = 2.5 * eps / opts.steps if opts.step_size is None else opts.step_size
    zero = 0
    for step in range(opts.steps):
        grad = _loss_grad(fn, model, adv, y, norm)[0]
        zero = _n_zero(grad) if step == 0 else zero
        adv = torch.maximum(torch.minimum(adv + alpha * grad.sign(), hi), lo)
    return adv, zero


def _pgd_options(
    fn: str, steps: Any, step_size: Any, random_start: Any, seed: Any
) -> tuple[_PGDOptions, int]:
    opts = _PGDOptions(
        _checks.check_int(fn, "steps", steps, minimum=1),
        _checks.check_real(fn, "step_size", step_size, positive=True, none=True),
        _checks.check_bool(fn, "random_start", random_start),
    )
    _checks.check_seed(fn, seed, none=False)
    return opts, int(seed)


def fgsm(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    mean: Norm = IMAGENET_MEAN,
    std: Norm = IMAGENET_STD,
) -> torch.Tensor:
    """Fast gradient sign method: one signed-gradient step of size ``eps``, clipped to [0, 1].

    Args:
        model: a classifier; attacked in eval mode (its training flags are restored).
        images: (N, C, H, W) floating pixels in [0, 1], before normalisation, on the model's device.
        labels: (N,) integer class indices (the model's output indices).
        eps: L-infinity size in pixel units (4/255 for four grey levels), >= 0; 0 returns the images.
        mean, std: the normalisation applied inside, per channel; both None for models that take [0, 1].

    Returns:
        (N, C, H, W) adversarial images in [0, 1], of ``images``' dtype and device.
    """
    fn = "fgsm"
    model = _check_model(fn, "model", model)
    x = _check_images(fn, images)
    y = _check_labels(fn, labels, x.shape[0]).to(x.device)
    eps = _check_eps(fn, eps)
    _warn_large_eps(fn, [eps])
    norm = _check_norm(fn, mean, std, x.shape[1])
    with eval_mode(model):
        x = x.detach()
        return _fgsm_step(x, _loss_grad(fn, model, x, y, norm)[0], eps)


def pgd(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    mean: Norm = IMAGENET_MEAN,
    std: Norm = IMAGENET_STD,
) -> torch.Tensor:
    """Projected gradient descent (L-infinity): ``steps`` signed-gradient steps projected onto the eps
    ball and [0, 1].

    Args:
        model, images, labels, eps, mean, std: as for :func:`fgsm`.
        steps: number of gradient steps (>= 1).
        step_size: size of each step in pixel units; default ``2.5 * eps / steps``.
        random_start: start from a uniform draw in the eps ball (else from the images).
        seed: seeds the random start: image ``i``'s is drawn from a generator seeded with a hash of
            (seed, eps, i), on the CPU, so devices agree.

    Returns:
        (N, C, H, W) adversarial images with ``|x' - x| <= eps`` and values in [0, 1].
    """
    fn = "pgd"
    model = _check_model(fn, "model", model)
    x = _check_images(fn, images)
    y = _check_labels(fn, labels, x.shape[0]).to(x.device)
    eps = _check_eps(fn, eps)
    _warn_large_eps(fn, [eps])
    opts, seed = _pgd_options(fn, steps, step_size, random_start, seed)
    norm = _check_norm(fn, mean, std, x.shape[1])
    with eval_mode(model):
        return _pgd(fn, model, x.detach(), y, eps, norm, opts, seed)[0]


# ---------------------------------------------------------------------------------------------- curves


def _check_eps_list(fn: str, eps: Any) -> list[float]:
    if isinstance(eps, (str, bytes)) or not isinstance(eps, Sequence) or not eps:
        raise TypeError(_checks.message(fn, "eps", "a non-empty sequence of numbers >= 0", eps))
    values = [_check_eps(fn, e) for e in eps]
    _warn_large_eps(fn, values)
    if len(set(values)) != len(values):
        raise ValueError(f"{fn}: eps must not repeat a value, got {list(eps)!r}")
    if 0 not in values:
        raise ValueError(
            f"{fn}: eps must include 0, the clean accuracy every relative accuracy is measured against "
            f"(it costs no attack), got {list(eps)!r}"
        )
    return values


def _check_attacks(fn: str, attacks: Any) -> list[str]:
    if isinstance(attacks, (str, bytes)) or not isinstance(attacks, Sequence) or not attacks:
        raise TypeError(
            _checks.message(
                fn, "attacks", f"a non-empty sequence of names from {ATTACKS} (wrap one in a tuple)", attacks
            )
        )
    names = [_checks.check_choice(fn, "attacks", a, ATTACKS) for a in attacks]
    if len(set(names)) != len(names):
        raise ValueError(f"{fn}: attacks must not repeat a name, got {list(attacks)!r}")
    return names


def _check_models(fn: str, models: Any) -> dict[str, torch.nn.Module]:
    if not isinstance(models, Mapping) or not models:
        raise TypeError(_checks.message(fn, "models", "a non-empty dict of name -> torch.nn.Module", models))
    for name, model in models.items():
        if not isinstance(name, str) or not name:
            raise TypeError(_checks.message(fn, "models", "keyed by non-empty str names", name))
        _check_model(fn, f"models[{name!r}]", model)
    return dict(models)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def robustness(
    models: Mapping[str, torch.nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: Sequence[float] = DEFAULT_EPS,
    attacks: Sequence[str] = ATTACKS,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    batch_size: int = 64,
    seed: int = 0,
    mean: Norm = IMAGENET_MEAN,
    std: Norm = IMAGENET_STD,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Accuracy of each model under each attack at each eps, raw and relative to its clean accuracy.

    ``relative_accuracy = accuracy / accuracy at eps = 0`` (the clean accuracy; 0 must be in ``eps``),
    so models that start from different accuracies compare fairly; NaN for a model that classifies no
    clean image correctly. At eps = 0 both attacks return the images unchanged, so that row is the clean
    accuracy (computed once, not attacked). A clean accuracy at or below chance (1 / classes) is warned
    about: the labels are likely not the model's class indices.

    ``zero_gradient`` is the share of the images whose input gradient was exactly 0 at the attack's
    first step (FGSM: at the images; PGD: at its random start), a gradient-masking indicator: the
    attack cannot move such an image, so its accuracy overstates the robustness. It is warned about when
    above 0; NaN at eps = 0 (no attack). ``n_images`` is N.

    Args:
        models: name -> classifier (logits, or an output with a ``logits`` attribute). Each runs on the
            device of its first parameter; the images are moved there batch by batch.
        images: (N, C, H, W) floating pixels in [0, 1], before normalisation (see
            :func:`load_labelled_images`).
        labels: (N,) integer class indices in the models' output space.
        eps: L-infinity sizes in pixel units, in [0, 1] with 0 among them, no repeats; rows follow this
            order. Above 0.5 is warned about (half the pixel range; 4/255 is written ``4 / 255``).
        attacks: any of ``"fgsm"``, ``"pgd"``.
        steps, step_size, random_start: PGD options (see :func:`pgd`).
        batch_size: images attacked at once.
        seed: seeds PGD's random starts, one per image from (seed, eps, image index): a row does not
            depend on the batch size, the other eps or models, or their order.
        mean, std: normalisation applied inside the models (see :func:`fgsm`).
        progress: Show each model's images done on standard error (a tqdm bar on a terminal, updated per
            batch, else one line per model).

    Returns:
        Rows (dicts with :data:`ROBUSTNESS_COLUMNS`), one per model, attack and eps, in that nesting order.

    Raises:
        TypeError: a model that is not a module, images that are not floating, labels not integers.
        ValueError: images outside [0, 1], a negative or repeated eps, an unknown attack, labels beyond
            the model's classes.
    """
    fn = "robustness"
    models = _check_models(fn, models)
    x_all = _check_images(fn, images)
    y_all = _check_labels(fn, labels, x_all.shape[0])
    eps_list = _check_eps_list(fn, eps)
    attack_list = _check_attacks(fn, attacks)
    opts, seed = _pgd_options(fn, steps, step_size, random_start, seed)
    batch_size = _checks.check_int(fn, "batch_size", batch_size, minimum=1)
    norm = _check_norm(fn, mean, std, x_all.shape[1])
    n = x_all.shape[0]
    rows = []
    for name, model in models.items():
        device, dtype = _device(model), _dtype(model, x_all.dtype)
        correct = {(a, e): 0 for a in attack_list for e in eps_list if e > 0}
        zero = dict.fromkeys(correct, 0)
        clean = classes = 0
        with eval_mode(model), Stage(progress, f"robustness {name}", n, "img") as stage:
            for sl in _batches(n, batch_size):
                x = x_all[sl].to(device, dtype)
                y = y_all[sl].to(device)
                if "fgsm" in attack_list and any(e > 0 for e in eps_list):
                    # FGSM's gradient at the images serves every eps, and its forward classifies them
                    grad, logits = _loss_grad(fn, model, x, y, norm)
                    clean += int((logits.argmax(1) == y).sum())
                    classes = logits.shape[1]
                else:
                    hits, classes = _correct(fn, model, x, y, norm)
                    clean += hits
                for e in eps_list:
                    if e == 0:
                        continue
                    for attack in attack_list:
                        if attack == "fgsm":
                            adv, zeros = _fgsm_step(x, grad, e), _n_zero(grad)
                        else:
                            adv, zeros = _pgd(fn, model, x, y, e, norm, opts, seed, sl.start)
                        correct[attack, e] += _correct(fn, model, adv, y, norm)[0]
                        zero[attack, e] += zeros
                stage.update(sl.stop - sl.start)
        clean_acc = clean / n
        _warn_chance(fn, name, clean_acc, classes)
        _warn_zero_gradient(fn, name, {k: v / n for k, v in zero.items() if v})
        for attack in attack_list:
            for e in eps_list:
                acc = clean_acc if e == 0 else correct[attack, e] / n
                rel = acc / clean_acc if clean_acc > 0 else math.nan
                zero_share = math.nan if e == 0 else zero[attack, e] / n
                values = (name, attack, e, acc, rel, zero_share, n)
                rows.append(dict(zip(ROBUSTNESS_COLUMNS, values, strict=True)))
    return rows


def _warn_chance(fn: str, name: str, accuracy: float, classes: int) -> None:
    if classes and accuracy <= 1 / classes:
        warnings.warn(
            f"{fn}: model {name!r} classifies {accuracy:.1%} of the clean images correctly, at or below "
            f"chance (1/{classes} classes): are the labels its class indices (class_index)?",
            UserWarning,
            stacklevel=3,
        )


def _warn_zero_gradient(fn: str, name: str, shares: dict[tuple[str, float], float]) -> None:
    """Gradient masking: an image whose input gradient is exactly 0 is not moved by the attack, so the
    model looks more robust than it is."""
    if shares:
        worst = ", ".join(f"{a} eps {255 * e:g}/255: {v:.1%}" for (a, e), v in shares.items())
        warnings.warn(
            f"{fn}: model {name!r} had an input gradient of exactly 0 at the attack's first step for some "
            f"images ({worst}; zero_gradient): the attack cannot move them, so its accuracy overstates "
            "the robustness (gradient masking: saturated or flat outputs, non-differentiable layers)",
            UserWarning,
            stacklevel=3,
        )


def _correct(fn: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Any) -> tuple[int, int]:
    """How many of ``x`` the model classifies as ``y``, and its number of classes."""
    with torch.no_grad():
        logits = _logits(fn, model, x, norm)
    if int(y.max()) >= logits.shape[1]:
        raise ValueError(f"{fn}: labels must be < the model's {logits.shape[1]} classes, got {int(y.max())}")
    return int((logits.argmax(1) == y).sum()), logits.shape[1]


# ---------------------------------------------------------------------------------------------- images


def _is_index(name: str) -> bool:
    """A folder named by a class index (``0``, ``207``)."""
    return name.isascii() and name.isdigit()


class LabelledImages(NamedTuple):
    """What :func:`load_labelled_images` returns.

    Attributes:
        images: (N, 3, size, size) float32 pixels in [0, 1] (not normalised).
        labels: (N,) int64 class indices.
        classes: the class folder names, sorted.
        paths: the N image files, in order.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    paths: list[str]


def load_labelled_images(
    root: str | os.PathLike[str],
    *,
    class_index: Mapping[str, int] | None = None,
    size: int = 224,
    resize: int | None = None,
) -> LabelledImages:
    """A labelled image folder with one sub-folder per class (``root/<class>/<image>``), as pixels.

    The label of a folder is ``class_index[folder]`` when given (needed when the folders are a subset of
    the model's classes: a folder of ImageNet class 207 is ``{"n02099601": 207}``); else the folder's name
    when every name is an integer (``0``, ``207``: class indices); else its position among the sorted
    folder names (torchvision's ``ImageFolder`` rule, which gives the standard ImageNet indices for the
    1,000 synset folders ``n01440764``, ..., and is right only when there is a folder for each of the
    model's classes: :func:`fastalign.eval.evaluate` checks that). Files in a class folder are read in
    sorted order; those without an image extension (:data:`IMAGE_EXTENSIONS`), hidden files and
    sub-folders are skipped (with a warning naming the first sub-folder: images are not searched
    recursively).
    Images are resized and centre-cropped like ImageNet evaluation (:class:`fastalign.data.ImageTransform`)
    and left in [0, 1]: the attacks normalise inside.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no class folders or no images, a class folder missing from ``class_index``, an index
            below 0, an unreadable image.
    """
    fn = "load_labelled_images"
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(_checks.message(fn, "root", "a folder path", root))
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{fn}: root {root!r} is not a folder (expected root/<class>/<image>)")
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not folders:
        raise ValueError(f"{fn}: root {root!r} holds no class folders (expected root/<class>/<image>)")
    if class_index is None:
        numbered = all(_is_index(f) for f in folders)
        index = {f: int(f) if numbered else i for i, f in enumerate(folders)}
    else:
        if not isinstance(class_index, Mapping):
            raise TypeError(
                _checks.message(fn, "class_index", "None or a dict folder name -> int", class_index)
            )
        missing = [f for f in folders if f not in class_index]
        if missing:
            raise ValueError(
                f"{fn}: class_index has no entry for the class folders {missing[:5]!r} of {root!r}"
            )
        index = {f: _checks.check_int(fn, f"class_index[{f!r}]", class_index[f], minimum=0) for f in folders}
    paths, labels, nested = [], [], []
    for folder in folders:
        directory = os.path.join(root, folder)
        for entry in sorted(os.listdir(directory)):
            path = os.path.join(directory, entry)
            if os.path.isdir(path) and not entry.startswith("."):
                nested.append(os.path.join(folder, entry))
            if (
                entry.startswith(".")
                or not entry.lower().endswith(IMAGE_EXTENSIONS)
                or not os.path.isfile(path)
            ):
                continue
            paths.append(path)
            labels.append(index[folder])
    if not paths:
        raise ValueError(
            f"{fn}: the class folders of {root!r} hold no images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    if nested:
        warnings.warn(
            f"{fn}: {len(nested)} sub-folder(s) inside class folders of {root!r} were skipped (images are "
            f"read from root/<class>/ only, not recursively), e.g. {nested[0]!r}",
            UserWarning,
            stacklevel=2,
        )
    transform = ImageTransform(size, resize, normalize=False)
    images = torch.stack([transform(p) for p in paths])
    return LabelledImages(images, torch.tensor(labels, dtype=torch.int64), folders, paths)


def _check_labelled_classes(
    fn: str,
    name: str,
    model: torch.nn.Module,
    labelled: LabelledImages,
    class_index: Mapping[str, int] | None,
    mean: Norm = IMAGENET_MEAN,
    std: Norm = IMAGENET_STD,
) -> None:
    """Refuses labels that cannot be the model's class indices, from one forward pass on one image: a
    label beyond its classes, or (without ``class_index``) folders labelled by their sorted position
    that are not one per class of the model (a subset of ImageNet's synsets gets labels 0..k-1: a clean
    accuracy of ~0 and relative accuracies of NaN, silently)."""
    norm = _check_norm(fn, mean, std, labelled.images.shape[1])
    device, dtype = _device(model), _dtype(model, labelled.images.dtype)
    with eval_mode(model), torch.no_grad():
        classes = _logits(fn, model, labelled.images[:1].to(device, dtype), norm).shape[1]
    positional = class_index is None and not all(_is_index(f) for f in labelled.classes)
    if positional and len(labelled.classes) != classes:
        raise ValueError(
            f"{fn}: the robustness image folder must have one class folder per class of model {name!r} "
            f"({classes}) when no class index is given, got {len(labelled.classes)} folders "
            f"({labelled.classes[:3]!r}...), which would be labelled 0..{len(labelled.classes) - 1} by "
            "their sorted position; pass class_index={folder: class index} (--class-index FILE.json, e.g. "
            '{"n02099601": 207}) or name the folders by their class indices'
        )
    if int(labelled.labels.max()) >= classes:
        raise ValueError(
            f"{fn}: the robustness labels must be < the {classes} classes of model {name!r}, got "
            f"{int(labelled.labels.max())}"
        )
