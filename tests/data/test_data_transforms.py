"""The ImageNet preprocessing of CORnet-S (fastalign.data.transforms): crop, normalisation, PIL vs tensor
resizing, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastalign.data.transforms import imagenet_transform

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def test_transform_crop_and_normalise_exact() -> None:
    # Shorter side already equals `resize`: no interpolation, only the centre crop and normalisation.
    img = torch.randint(0, 256, (3, 6, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = imagenet_transform(size=4, resize=6)(img)
    top, left = 1, round((9 - 4) / 2)
    expected = (img[:, top : top + 4, left : left + 4].double() / 255 - MEAN.double()) / STD.double()
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)
    assert out.dtype == torch.float32


def test_transform_constant_image_and_shapes() -> None:
    tf = imagenet_transform()
    img = torch.empty(3, 300, 400, dtype=torch.uint8)
    img[0], img[1], img[2] = 255, 128, 0
    out = tf(img)
    assert out.shape == (3, 224, 224)
    expected = (torch.tensor([1.0, 128 / 255, 0.0]).view(3, 1, 1) - MEAN) / STD
    torch.testing.assert_close(out, expected.expand(3, 224, 224), rtol=0, atol=1e-6)
    assert tf(img.unsqueeze(0).repeat(2, 1, 1, 1)).shape == (2, 3, 224, 224)
    assert tf(torch.zeros(3, 500, 240, dtype=torch.uint8)).shape == (3, 224, 224)


def test_transform_pil_matches_tensor() -> None:
    Image = pytest.importorskip("PIL.Image")
    g = torch.Generator().manual_seed(0)
    # A smooth image, so that PIL's and torch's antialiased bilinear filters agree to about a grey level.
    small = torch.rand(1, 3, 12, 16, generator=g) * 255
    img = F.interpolate(small, size=(300, 400), mode="bicubic", align_corners=False).clamp(0, 255).round()
    img = img[0].to(torch.uint8)
    pil = Image.fromarray(img.permute(1, 2, 0).numpy(), mode="RGB")
    tf = imagenet_transform()
    a, b = tf(pil), tf(img)
    assert a.shape == b.shape == (3, 224, 224)
    diff = ((a - b) * STD * 255).abs()  # in grey levels
    assert diff.max() <= 2.0 and diff.mean() < 0.5
    grey = Image.fromarray(img[0].numpy(), mode="L")
    assert tf(grey).shape == (3, 224, 224)


def test_transform_bad_input() -> None:
    tf = imagenet_transform()
    with pytest.raises(TypeError, match="uint8"):
        tf(torch.rand(3, 256, 256))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        tf(torch.zeros(4, 256, 256, dtype=torch.uint8))
    with pytest.raises(TypeError, match="PIL"):
        tf([[0, 1]])
    with pytest.raises(ValueError, match="size"):
        imagenet_transform(size=0)
    with pytest.raises(ValueError, match="resize"):
        imagenet_transform(size=224, resize=100)


@pytest.mark.parametrize("shape", [(3, 0, 5), (3, 5, 0), (2, 3, 0, 5)], ids=str)
def test_transform_empty_image_is_a_clear_error(shape: tuple[int, ...]) -> None:
    """Used to be a ZeroDivisionError in the aspect ratio."""
    h, w = shape[-2:]
    with pytest.raises(ValueError, match=rf"ImageNetTransform: image is {w}x{h} .*at least 1x1"):
        imagenet_transform(4)(torch.zeros(shape, dtype=torch.uint8))


def test_transform_empty_pil_image_is_a_clear_error() -> None:
    Image = pytest.importorskip("PIL.Image")
    with pytest.raises(ValueError, match=r"ImageNetTransform: image is 0x5"):
        imagenet_transform(4)(Image.new("RGB", (0, 5)))


def test_transform_without_crop_squeezes_to_a_square_as_the_published_resize() -> None:
    # crop=False is torchvision's Resize((size, size)) (the published ReAlnet code): the whole image kept,
    # both sides resized, PIL's bilinear filter for PIL images, antialiased interpolate for tensors
    Image = pytest.importorskip("PIL.Image")
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8, generator=g)
    pil = Image.fromarray(img.permute(1, 2, 0).numpy(), mode="RGB")
    tf = imagenet_transform(size=8, normalize=False, crop=False)
    squeezed = torch.frombuffer(
        bytearray(pil.resize((8, 8), Image.Resampling.BILINEAR).tobytes()), dtype=torch.uint8
    )
    want = squeezed.view(8, 8, 3).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(tf(pil), want, rtol=0, atol=0)
    by_tensor = F.interpolate(img[None].float(), size=(8, 8), mode="bilinear", antialias=True)[0]
    torch.testing.assert_close(tf(img), by_tensor.round().clamp(0, 255) / 255, rtol=0, atol=0)
    # the left and right columns are in the picture, which a crop to 8 x 8 of a 20 x 30 image drops
    left = torch.zeros(3, 20, 30, dtype=torch.uint8)
    left[:, :, :5] = 255
    assert imagenet_transform(size=8, normalize=False, crop=False)(left)[:, :, 0].min() > 0.9
    assert imagenet_transform(size=8, resize=8, normalize=False)(left)[:, :, 0].max() < 0.2  # cut: a blur
    # square images: the same bits as the cropping transform with resize == size
    sq = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8, generator=g)
    torch.testing.assert_close(
        imagenet_transform(8, crop=False)(sq), imagenet_transform(8, resize=8)(sq), rtol=0, atol=0
    )
    assert "crop=False" in repr(imagenet_transform(8, crop=False)) and "crop" not in repr(
        imagenet_transform(8)
    )
    with pytest.raises(ValueError, match=r"resize must be None or size \(8\) with crop=False"):
        imagenet_transform(8, resize=10, crop=False)
    with pytest.raises(TypeError, match="crop must be a bool"):
        imagenet_transform(8, crop="no")  # type: ignore[arg-type]


def test_transform_pickles_with_and_without_crop() -> None:
    import pickle

    for tf in (imagenet_transform(8, crop=False), imagenet_transform(8)):
        back = pickle.loads(pickle.dumps(tf))
        assert repr(back) == repr(tf)
    old = imagenet_transform(8)
    del old.__dict__["crop"]  # as pickled before crop existed
    assert pickle.loads(pickle.dumps(old)).crop is True
