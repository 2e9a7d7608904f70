"""calibrate_batchnorm: a random network's BatchNorm statistics set to those of its input over the images
(the demo's and the shared test runs' starting CORnet-S), against statistics computed directly."""

from __future__ import annotations

import re

import pytest
import torch

from fastalign.models import calibrate_batchnorm


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.3), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 2, 1), torch.nn.BatchNorm2d(2),
    )  # fmt: skip
    return net.eval()


def test_calibrate_batchnorm_sets_the_images_statistics() -> None:
    net, images = _net(), torch.randn(10, 3, 8, 8, dtype=torch.float64) * 5 + 2
    net = net.double()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "tracked" not in k}
    assert calibrate_batchnorm(net, images) is net
    first = net[0](images)
    torch.testing.assert_close(net[1].running_mean, first.mean(dim=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net[1].running_var, first.var(dim=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    assert not net.training and net[1].momentum == 0.3 and net[4].momentum == 0.1
    assert int(net[1].num_batches_tracked) == 1
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    # in eval mode, each channel's normalised output now has mean 0 and (biased) variance near 1
    normalised = net[1](first)
    torch.testing.assert_close(
        normalised.mean(dim=(0, 2, 3)), torch.zeros(4, dtype=torch.float64), atol=1e-6, rtol=0
    )
    # two batches of five: the mean of the batches' means (the whole set's) and of their variances
    calibrate_batchnorm(net.train(), images, batch_size=5)
    assert net.training and int(net[1].num_batches_tracked) == 2
    torch.testing.assert_close(net[1].running_mean, first.mean(dim=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    halves = torch.stack([h.var(dim=(0, 2, 3)) for h in first.split(5)]).mean(0)
    torch.testing.assert_close(net[1].running_var, halves, rtol=1e-12, atol=1e-12)


def test_calibrate_batchnorm_refuses_bad_input() -> None:
    images = torch.randn(10, 3, 8, 8)
    cases = [
        ((object(), images), {}, TypeError, "model must be a torch.nn.Module"),
        ((_net(), images.long()), {}, TypeError, "images must be a floating-point tensor"),
        ((_net(), images[:0]), {}, ValueError, "at least one input"),
        ((_net(), images.clone().fill_(float("nan"))), {}, ValueError, "NaN or inf"),
        ((_net(), torch.randn(11, 3, 8, 8)), {"batch_size": 5}, ValueError, "a batch of one image"),
        ((_net(), images), {"batch_size": 0}, ValueError, "batch_size"),
        ((torch.nn.Conv2d(3, 4, 3), images), {}, ValueError, "no BatchNorm layer"),
    ]
    for args, kwargs, kind, message in cases:
        with pytest.raises(kind, match=f"calibrate_batchnorm: .*{re.escape(message)}"):
            calibrate_batchnorm(*args, **kwargs)
