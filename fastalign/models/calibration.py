"""BatchNorm calibration: running statistics that fit the images a network will see.

A randomly initialised network keeps BatchNorm's initial running statistics (mean 0, variance 1), which
fit no real input: in eval mode its activations drift layer by layer until a deep network such as
CORnet-S (whose recurrent blocks apply their convolutions several times) gives features that are
constant or zero for every image, whose RDMs are undefined. A pretrained network's statistics fit its
training images. :func:`calibrate_batchnorm` gives a random network that property without training it:
its weights stay as they are, and each BatchNorm layer's running mean and variance become those of its
input over the given images. This is what the demo and the shared test runs start alignment from.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from fastalign import _checks

__all__ = ["calibrate_batchnorm"]

_FN = "calibrate_batchnorm"


def calibrate_batchnorm(
    model: nn.Module, images: torch.Tensor, *, batch_size: int | None = None
) -> nn.Module:
    """Sets every BatchNorm layer's running statistics to those of its input over ``images``.

    The running statistics are reset and then accumulated as a cumulative average (BatchNorm's
    ``momentum=None``) over forward passes in training mode without gradients, by torch's
    :func:`torch.optim.swa_utils.update_bn`; this function adds the checks of its input. With one batch (the
    default) each layer's running mean is exactly its input's mean over the images and pixels, and its
    running variance the unbiased variance; with several batches they are the averages of the batches'
    statistics (equal to the whole set's mean when the batches are of equal size). The weights, each
    layer's ``momentum`` and the model's training flag are left as they were.

    Args:
        model: any module; its ``BatchNorm1d/2d/3d`` layers (``nn.modules.batchnorm._BatchNorm``) that
            track running statistics are calibrated.
        images: (n, ...) inputs of the model, e.g. (n, 3, H, W) normalised images.
        batch_size: images per forward pass; None: all in one.

    Returns:
        ``model``, calibrated in place.

    Raises:
        TypeError: ``model`` is not a module, or ``images`` is not a floating-point tensor.
        ValueError: ``model`` has no BatchNorm layer with running statistics, ``images`` is empty, holds
            NaN or inf, or a batch holds a single image (BatchNorm needs two values per channel).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(_checks.message(_FN, "model", "a torch.nn.Module", model))
    _checks.check_tensor(_FN, "images", images, shape="(n, ...)")
    _checks.check_floating(_FN, "images", images)
    if images.dim() < 1 or images.shape[0] == 0:
        raise ValueError(
            f"{_FN}: images must hold at least one input along dim 0, got shape {tuple(images.shape)}"
        )
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{_FN}: images holds NaN or inf; expected finite inputs")
    n = images.shape[0]
    size = n if batch_size is None else _checks.check_int(_FN, "batch_size", batch_size, minimum=1)
    if n % size == 1 or size == 1:
        raise ValueError(
            f"{_FN}: {n} images in batches of {size} leave a batch of one image, whose BatchNorm variance is "
            "undefined; choose another batch_size"
        )
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms:
        raise ValueError(
            f"{_FN}: model ({type(model).__name__}) has no BatchNorm layer with running statistics"
        )
    # torch's own BatchNorm update (what SWA uses): resets the statistics, accumulates them with
    # momentum=None in training mode without gradients, and restores each momentum and the training flag
    update_bn(images.split(size), model)
    return model
