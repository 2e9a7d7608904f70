"""Brain encoders against independent rebuilds of the published architectures.

The ``Published*`` modules below are written from the published layer lists (NonaRjb/AlignVis
src/brain_architectures/nice.py, atms.py + atms_utils/, brain_mlp.py, src/models/brain_encoder.py; braindecode
braindecode/models/eegnet.py), keeping the published module structure and forward code paths (einsum
attention, Conv1d feed-forward, a max-norm parametrization), so that they share no code with fastalign's.
Weights are copied by name into them and the outputs compared in float64.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from fastalign.models.encoders import ATMS, ENCODERS, NICE, BrainMLP, EEGNetV4, brain_encoder

SIZES = [(63, 250), (17, 100), (5, 80), (1, 128)]  # the published EEG sizes, then small and one channel
D = 24
SMALL = {"mlp": {"hidden": 32}}  # BrainMLP's published 4096 hidden units are counted on the meta device
ZERO_DROPOUT = {
    "nice": {"dropout": 0.0, "proj_dropout": 0.0},
    "eegnetv4": {"drop_prob": 0.0},
    "atms": {"dropout": 0.0, "proj_dropout": 0.0, "transformer_dropout": 0.0},
    "mlp": {"dropout": 0.0, "block_dropout": 0.0},
}


def _x(c: int, t: int, b: int = 4, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, t, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _encoder(name: str, c: int, t: int, d: int = D, **options: object) -> nn.Module:
    torch.manual_seed(0)
    return brain_encoder(name, c, t, d, **{**SMALL.get(name, {}), **options})


# ---------------------------------------------------------------- published architectures, rebuilt


class _ResidualAdd(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


class _PatchEmbedding(nn.Module):
    """nice.py / atms.py PatchEmbedding: tsconv, projection, then 'b e h w -> b (h w) e'."""

    def __init__(self, n_channels: int, p: float) -> None:
        super().__init__()
        self.tsconv = nn.Sequential(
            nn.Conv2d(1, 40, (1, 25), (1, 1)),
            nn.AvgPool2d((1, 51), (1, 5)),
            nn.BatchNorm2d(40),
            nn.ELU(),
            nn.Conv2d(40, 40, (n_channels, 1), (1, 1)),
            nn.BatchNorm2d(40),
            nn.ELU(),
            nn.Dropout(p),
        )
        self.projection = nn.Sequential(nn.Conv2d(40, 40, (1, 1), stride=(1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection(self.tsconv(x))
        b, e, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(b, h * w, e)


def _proj_eeg(embedding_dim: int, proj_dim: int, p: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(embedding_dim, proj_dim),
        _ResidualAdd(nn.Sequential(nn.GELU(), nn.Linear(proj_dim, proj_dim), nn.Dropout(p))),
        nn.LayerNorm(proj_dim),
    )


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous().view(x.size(0), -1)


class PublishedNICE(nn.Module):
    """NICE(emb_size=40, embedding_dim, proj_dim=d, n_channels) inside BrainEncoder (its repr_layer)."""

    def __init__(self, c: int, embedding_dim: int, d: int, p: float = 0.5, repr_layer: bool = True) -> None:
        super().__init__()
        self.encoder = nn.Sequential(_PatchEmbedding(c, p), _Flatten())
        self.projector = _proj_eeg(embedding_dim, d, p)
        self.repr_layer = nn.Linear(d, d) if repr_layer else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.projector(self.encoder(x.unsqueeze(1)))  # the published loader yields (B, 1, C, T)
        return out if self.repr_layer is None else self.repr_layer(out)


NICE_MAP = {
    "conv.tsconv.": "encoder.0.tsconv.",
    "conv.projection.": "encoder.0.projection.0.",
    "head.linear.": "projector.0.",
    "head.residual.1.": "projector.1.fn.1.",
    "head.norm.": "projector.2.",
    "head.out.": "repr_layer.",
}


class _MaxNorm(nn.Module):
    def __init__(self, max_norm: float) -> None:
        super().__init__()
        self.max_norm = max_norm

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w.renorm(p=2, dim=0, maxnorm=self.max_norm)


class PublishedEEGNet(nn.Module):
    """braindecode EEGNet(n_chans=c, n_outputs=d, n_times=t) with its defaults (final conv classifier)."""

    def __init__(self, c: int, t: int, d: int, p: float = 0.25) -> None:
        super().__init__()

        def bn(n: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(n, momentum=0.01, affine=True, eps=1e-3)

        spatial = nn.Conv2d(8, 16, (c, 1), bias=False, groups=8)
        nn.init.xavier_uniform_(spatial.weight, gain=1)
        parametrize.register_parametrization(spatial, "weight", _MaxNorm(1))
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, (1, 64), bias=False, padding=(0, 32)),
            bn(8),
            spatial,
            bn(16),
            nn.ELU(),
            nn.AvgPool2d(kernel_size=(1, 4)),
            nn.Dropout(p),
            nn.Conv2d(16, 16, (1, 16), bias=False, groups=16, padding=(0, 8)),
            nn.Conv2d(16, 16, kernel_size=(1, 1), bias=False),
            bn(16),
            nn.ELU(),
            nn.AvgPool2d(kernel_size=(1, 8)),
            nn.Dropout(p),
        )
        with torch.no_grad():  # braindecode's get_output_shape
            n_out_time = self.features(torch.zeros(1, 1, c, t)).shape[3]
        self.conv_classifier = nn.Conv2d(16, d, (1, n_out_time), bias=True)
        nn.init.zeros_(self.conv_classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(-1).permute(0, 3, 1, 2)  # Ensure4d, then 'batch ch t 1 -> batch 1 ch t'
        return self.conv_classifier(self.features(x))[:, :, 0, 0]


EEGNET_MAP = {
    "conv_temporal.": "features.0.",
    "bnorm_temporal.": "features.1.",
    "conv_spatial.weight": "features.2.parametrizations.weight.original",
    "bnorm_1.": "features.3.",
    "conv_separable_depth.": "features.7.",
    "conv_separable_point.": "features.8.",
    "bnorm_2.": "features.9.",
    "projection.": "conv_classifier.",
}


class _AttentionLayer(nn.Module):
    """SelfAttention_Family.AttentionLayer around FullAttention(mask_flag=False)."""

    def __init__(self, d_model: int, n_heads: int, p: float) -> None:
        super().__init__()
        d_keys = d_model // n_heads
        self.query_projection = nn.Linear(d_model, d_keys * n_heads)
        self.key_projection = nn.Linear(d_model, d_keys * n_heads)
        self.value_projection = nn.Linear(d_model, d_keys * n_heads)
        self.out_projection = nn.Linear(d_keys * n_heads, d_model)
        self.n_heads = n_heads
        self.dropout = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.n_heads
        q = self.query_projection(x).view(b, n, h, -1)
        k = self.key_projection(x).view(b, n, h, -1)
        v = self.value_projection(x).view(b, n, h, -1)
        scores = torch.einsum("blhe,bshe->bhls", q, k)
        a = self.dropout(torch.softmax(scores / math.sqrt(q.shape[-1]), dim=-1))
        return self.out_projection(torch.einsum("bhls,bshd->blhd", a, v).contiguous().view(b, n, -1))


class _EncoderLayer(nn.Module):
    """Transformer_EncDec.EncoderLayer with activation='gelu'."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, p: float) -> None:
        super().__init__()
        self.attention = _AttentionLayer(d_model, n_heads, p)
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(x))
        y = x = self.norm1(x)
        y = self.dropout(F.gelu(self.conv1(y.transpose(-1, 1))))
        y = self.dropout(self.conv2(y).transpose(-1, 1))
        return self.norm2(x + y)


class PublishedATMS(nn.Module):
    """ATMS(num_latents=d) inside BrainEncoder, with the published Config (d_model 250, 4 heads, d_ff 256,
    1 layer, dropout 0.25, 10 subjects) and its sizes taken from (c, t) instead of 63 and 250.

    ``keep`` is the slice of tokens after the transformer: the published ``[:, :63]`` (subject token and
    channels 1..62), or 1: (the c channel tokens, what fastalign keeps)."""

    def __init__(self, c: int, t: int, d: int, keep: slice, p: float = 0.25, p_conv: float = 0.5) -> None:
        super().__init__()
        d_model, n_subjects = 250, 10
        self.keep = keep
        # DataEmbedding(seq_len=t, d_model, 'timeF', 'h', dropout, joint_train=False, num_subjects=10)
        self.value_embedding = nn.Linear(t, d_model)
        self.temporal_embedding = nn.Linear(4, d_model, bias=False)  # TimeFeatureEmbedding, never called
        self.subject_embedding = nn.Embedding(n_subjects, d_model)
        self.shared_embedding = nn.Parameter(torch.randn(1, d_model))
        self.mask_embedding = nn.Parameter(torch.randn(1, d_model))  # never used
        self.mask_token = nn.Parameter(torch.randn(1, d_model))  # never used
        self.embedding_dropout = nn.Dropout(p)
        self.attn_layers = nn.ModuleList([_EncoderLayer(d_model, 4, 256, p)])
        self.norm = nn.LayerNorm(d_model)
        self.enc_eeg = nn.Sequential(_PatchEmbedding(c, p_conv), _Flatten())
        self.proj_eeg = _proj_eeg(40 * ((d_model - 24 - 51) // 5 + 1), d, p_conv)
        self.repr_layer = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, subject_ids: torch.Tensor | None) -> torch.Tensor:
        b = len(x)
        if subject_ids is None or torch.any(subject_ids >= self.subject_embedding.num_embeddings):
            token = self.shared_embedding.expand(b, 1, -1)
        else:
            token = self.subject_embedding(subject_ids).unsqueeze(1)
        x = self.embedding_dropout(torch.cat([token, self.value_embedding(x)], dim=1))
        for layer in self.attn_layers:
            x = layer(x)
        x = self.norm(x)[:, self.keep, :]
        return self.repr_layer(self.proj_eeg(self.enc_eeg(x.unsqueeze(1))))


ATMS_UNUSED = ("temporal_embedding.", "mask_embedding", "mask_token")
# Applied in order, each to the result of the ones before ("head.out." before ".out.").
ATMS_MAP = {
    "head.out.": "repr_layer.",
    "embedding.": "value_embedding.",
    "shared_token": "shared_embedding",
    "subject_tokens.": "subject_embedding.",
    "layers.": "attn_layers.",
    ".query.": ".attention.query_projection.",
    ".key.": ".attention.key_projection.",
    ".value.": ".attention.value_projection.",
    ".out.": ".attention.out_projection.",
    ".ff1.": ".conv1.",
    ".ff2.": ".conv2.",
    "conv.tsconv.": "enc_eeg.0.tsconv.",
    "conv.projection.": "enc_eeg.0.projection.0.",
    "head.linear.": "proj_eeg.0.",
    "head.residual.1.": "proj_eeg.1.fn.1.",
    "head.norm.": "proj_eeg.2.",
}


class PublishedBrainMLP(nn.Module):
    """BrainMLP(out_dim=d, in_dim=n, clip_size=d, use_projector=False) ('ln', act_first=False) inside
    BrainEncoder (its repr_layer)."""

    def __init__(self, n: int, d: int, h: int = 4096, n_blocks: int = 4, p0: float = 0.5, p: float = 0.15):
        super().__init__()
        self.lin0 = nn.Sequential(nn.Linear(n, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(p0))
        self.mlp = nn.ModuleList(
            nn.Sequential(nn.Linear(h, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(p)) for _ in range(n_blocks)
        )
        self.lin1 = nn.Linear(h, d, bias=True)
        self.repr_layer = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lin0(x.reshape(x.shape[0], -1))
        residual = x
        for block in self.mlp:
            x = block(x)
            x += residual
            residual = x
        return self.repr_layer(self.lin1(x))


MLP_MAP = {"blocks.": "mlp.", "out.": "repr_layer."}


def _rename(key: str, mapping: dict[str, str]) -> str:
    for ours, theirs in mapping.items():
        key = key.replace(ours, theirs)
    return key


def _copy_into(
    ours: nn.Module, ref: nn.Module, mapping: dict[str, str], unused: tuple[str, ...] = ()
) -> None:
    """Load ``ours``'s state into ``ref`` by renamed keys (reshaped: Conv1d vs Linear, (1, 1, n) vs (1, n)),
    checking that every key of ``ref`` is set except its unused parameters."""
    theirs = ref.state_dict()
    new = {}
    for key, value in ours.state_dict().items():
        name = _rename(key, mapping)
        assert name in theirs, f"{key} -> {name} is not a key of the published module"
        new[name] = value.reshape(theirs[name].shape).clone()
    missing = [k for k in theirs if k not in new and not k.startswith(unused)]
    assert not missing, missing
    ref.load_state_dict({**theirs, **new})


def _no_dropout(m: nn.Module) -> nn.Module:
    for mod in m.modules():
        if isinstance(mod, nn.Dropout):
            mod.p = 0.0
    return m


def _assert_same_forward(ours: nn.Module, ref: nn.Module, x: torch.Tensor, *args: object) -> None:
    """Equal outputs in training mode (batch statistics) with dropout off, equal running statistics after
    it, then equal outputs in eval mode."""
    ours, ref = ours.double(), _no_dropout(ref.double())
    torch.testing.assert_close(ours.train()(x, *args), ref.train()(x, *args), rtol=1e-10, atol=1e-10)
    ours_stats = {k: v for k, v in ours.state_dict().items() if "running" in k}
    ref_stats = {k: v for k, v in ref.state_dict().items() if "running" in k}
    assert len(ours_stats) == len(ref_stats)
    for a, b in zip(ours_stats.values(), ref_stats.values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.eval()(x, *args), ref.eval()(x, *args), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- against the published architectures


def _nice_features(c: int, t: int) -> int:
    return 40 * ((t - 24 - 51) // 5 + 1)


@pytest.mark.parametrize(("c", "t", "d"), [(63, 250, 768), (17, 100, 512)])
def test_nice_counts_match_published(c: int, t: int, d: int) -> None:
    with torch.device("meta"):
        ours = NICE(c, t, d)
        assert ours.conv.n_features == _nice_features(c, t)
        assert _count(ours) == _count(PublishedNICE(c, _nice_features(c, t), d))
        bare = NICE(c, t, d, output_linear=False)
        assert _count(bare) == _count(PublishedNICE(c, _nice_features(c, t), d, repr_layer=False))
        assert _count(ours) - _count(bare) == d * d + d


def test_nice_published_size_flattens_to_1440() -> None:
    assert NICE(63, 250, 8).conv.n_features == 1440  # the published embedding_dim


@pytest.mark.parametrize(("c", "t"), [(63, 250), (17, 100)])
def test_nice_matches_published(c: int, t: int) -> None:
    ours = _encoder("nice", c, t, **ZERO_DROPOUT["nice"])
    ref = PublishedNICE(c, _nice_features(c, t), D)
    _copy_into(ours, ref, NICE_MAP)
    _assert_same_forward(ours, ref, _x(c, t, b=2, dtype=torch.float64))


@pytest.mark.parametrize(("c", "t", "d"), [(63, 250, 768), (17, 100, 512), (22, 1125, 4)])
def test_eegnet_counts_and_shape_match_braindecode(c: int, t: int, d: int) -> None:
    ours, ref = EEGNetV4(c, t, d), PublishedEEGNet(c, t, d)
    assert _count(ours) == _count(ref)
    assert ours.projection.weight.numel() == ref.conv_classifier.weight.numel()
    x = _x(c, t, b=2)
    assert ours(x).shape == ref(x).shape == (2, d)


@pytest.mark.parametrize(("c", "t"), [(63, 250), (17, 100), (3, 27)])
def test_eegnet_matches_braindecode(c: int, t: int) -> None:
    ours = _encoder("eegnetv4", c, t, drop_prob=0.0)
    with torch.no_grad():  # filters well beyond the max-norm of 1, so that the constraint acts
        ours.conv_spatial.weight.mul_(10.0)
        ours.bnorm_1.bias.uniform_(-1, 1)
    ref = PublishedEEGNet(c, t, D)
    _copy_into(ours, ref, EEGNET_MAP)
    _assert_same_forward(ours, ref, _x(c, t, b=2, dtype=torch.float64))


def test_eegnet_initialisation_follows_braindecode() -> None:
    m = _encoder("eegnetv4", 63, 250)
    assert not m.projection.bias.any()
    bound = math.sqrt(6 / (63 + 16 * 63))  # Xavier on a (16, 1, 63, 1) weight: fan_in 63, fan_out 16 x 63
    w = m.conv_spatial.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


def _atms_unused(ref: nn.Module) -> int:
    return sum(p.numel() for n, p in ref.named_parameters() if n.startswith(ATMS_UNUSED))


@pytest.mark.parametrize(("c", "t", "d"), [(63, 250, 1024), (17, 100, 768)])
def test_atms_counts_match_published(c: int, t: int, d: int) -> None:
    with torch.device("meta"):
        ref = PublishedATMS(c, t, d, keep=slice(None, c))
        ours = ATMS(c, t, d, n_subjects=10)
        # The published unused parameters: a time-feature Linear(4, 250) and two mask tokens
        assert _atms_unused(ref) == 4 * 250 + 250 + 250
        assert _count(ours) == _count(ref) - _atms_unused(ref)
        assert _count(ours) - _count(ATMS(c, t, d)) == 10 * 250  # the per-subject tokens


@pytest.mark.parametrize(("c", "t"), [(63, 250), (17, 100)])
def test_atms_matches_published_with_channel_tokens(c: int, t: int) -> None:
    ours = _encoder("atms", c, t, n_subjects=10, **ZERO_DROPOUT["atms"])
    ref = PublishedATMS(c, t, D, keep=slice(1, None))
    _copy_into(ours, ref, ATMS_MAP, ATMS_UNUSED)
    x = _x(c, t, b=2, dtype=torch.float64)
    _assert_same_forward(ours, ref, x, None)
    subject = torch.tensor([3, 9])
    torch.testing.assert_close(ours(x, subject), ref(x, subject), rtol=1e-10, atol=1e-10)


def test_atms_keeps_every_channel_token_not_the_published_slice() -> None:
    """The published [:, :63] keeps the subject token and drops the last channel's token."""
    ours = _encoder("atms", 63, 250).double().eval()
    published = PublishedATMS(63, 250, D, keep=slice(None, 63))
    _copy_into(ours, published, ATMS_MAP, (*ATMS_UNUSED, "subject_embedding."))
    x = _x(63, 250, b=2, dtype=torch.float64)
    assert not torch.allclose(ours(x), published.double().eval()(x, None), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("n", "d"), [(15724, 768), (63 * 250, 1024)])  # NSD subject 1's voxels; EEG
def test_mlp_counts_match_published(n: int, d: int) -> None:
    with torch.device("meta"):
        assert _count(BrainMLP(n, 1, d)) == _count(PublishedBrainMLP(n, d))
        assert _count(brain_encoder("mlp", 63, 250, d)) == _count(PublishedBrainMLP(63 * 250, d))


def test_mlp_matches_published() -> None:
    ours = _encoder("mlp", 40, 1, hidden=32, **ZERO_DROPOUT["mlp"])
    ref = PublishedBrainMLP(40, D, h=32)
    _copy_into(ours, ref, MLP_MAP)
    voxels = torch.randn(5, 40, dtype=torch.float64)
    _assert_same_forward(ours, ref, voxels)
    torch.testing.assert_close(ours(voxels.unsqueeze(-1)), ref(voxels), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- behaviour of every encoder


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize(("c", "t"), SIZES)
def test_output_shape(name: str, c: int, t: int) -> None:
    m = _encoder(name, c, t)
    out = m(_x(c, t, b=3))
    assert out.shape == (3, D) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (m.n_channels, m.n_times, m.embed_dim) == (c, t, D)
    assert m(_x(c, t, b=1)).shape == (1, D)


@pytest.mark.parametrize("name", ENCODERS)
def test_gradients_reach_every_parameter_and_the_input(name: str) -> None:
    m = _encoder(name, 17, 100)
    x = _x(17, 100).requires_grad_()
    m(x).square().sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ENCODERS)
def test_eval_is_deterministic_and_train_mode_drops_out(name: str) -> None:
    m = _encoder(name, 17, 100)
    x = _x(17, 100)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    assert not torch.equal(m(x), m(x))
    quiet = _encoder(name, 17, 100, **ZERO_DROPOUT[name]).train()
    assert torch.equal(quiet(x), quiet(x)), "without dropout, training mode must repeat"
    assert not any(isinstance(mod, nn.Dropout) and mod.p > 0 for mod in quiet.modules())


@pytest.mark.parametrize("name", ENCODERS)
def test_float64_and_bfloat16_autocast(name: str) -> None:
    m = _encoder(name, 17, 100).eval()
    x = _x(17, 100)
    out64 = m.double()(x.double())
    assert out64.dtype == torch.float64
    m.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(x)
    torch.testing.assert_close(low.float(), m(x), rtol=0.1, atol=0.1)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ENCODERS)
def test_forward_refuses_wrong_shapes(name: str) -> None:
    m = _encoder(name, 17, 100)
    fn = type(m).__name__ + r"\.forward"
    for bad in (_x(16, 100), _x(17, 99), _x(17, 100)[:, None], torch.randn(17, 100)[None, None, None]):
        with pytest.raises(ValueError, match=rf"^{fn}: x must have shape \(B, 17, 100\)"):
            m(bad)
    with pytest.raises(TypeError, match=rf"^{fn}: x must be a floating-point tensor, got dtype torch.int64"):
        m(torch.zeros(2, 17, 100, dtype=torch.int64))
    with pytest.raises(TypeError, match=rf"^{fn}: x must be a torch.Tensor.*got ndarray"):
        m(np.zeros((2, 17, 100), np.float32))


@pytest.mark.parametrize("name", [n for n in ENCODERS if n != "mlp"])
def test_forward_refuses_flattened_eeg(name: str) -> None:
    with pytest.raises(ValueError, match=r"x must have shape \(B, 17, 100\) \(B, n_channels, n_times as"):
        _encoder(name, 17, 100)(torch.randn(2, 1700))


def test_mlp_takes_flattened_or_shaped_input_only() -> None:
    m = _encoder("mlp", 17, 100).eval()
    x = _x(17, 100)
    assert torch.equal(m(x), m(x.flatten(1)))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 17, 100\) or \(B, 1700\)"):
        m(torch.randn(2, 1701))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 17, 100\) or \(B, 1700\)"):
        m(x.transpose(1, 2))


@pytest.mark.parametrize(
    ("name", "minimum", "what"),
    [("nice", 75, "temporal convolution's kernel of 25"), ("eegnetv4", 27, "average poolings of 4 and 8")],
)
def test_too_few_time_samples_name_the_minimum(name: str, minimum: int, what: str) -> None:
    cls = type(_encoder(name, 3, minimum))
    assert _encoder(name, 3, minimum)(_x(3, minimum)).shape == (4, D)  # the minimum runs
    pattern = (
        rf"^{cls.__name__}: n_times must be at least {minimum} \(samples, for .*{what}.*\), got {minimum - 1}"
    )
    with pytest.raises(ValueError, match=pattern):
        _encoder(name, 3, minimum - 1)


def test_minimum_follows_the_options() -> None:
    assert NICE(2, 31, 4, temporal_kernel=5, pool_kernel=27)(_x(2, 31)).shape == (4, 4)
    with pytest.raises(ValueError, match=r"n_times must be at least 31 \(samples"):
        NICE(2, 30, 4, temporal_kernel=5, pool_kernel=27)
    # (T + 1) // 8 + 1 samples must fill the second pooling of 8: T + 1 >= 56
    m = EEGNetV4(2, 55, 4, pool1_kernel_size=8, pool2_kernel_size=8)
    assert m(_x(2, 55)).shape == (4, 4)
    with pytest.raises(ValueError, match=r"n_times must be at least 55 \(samples, .* poolings of 8 and 8\)"):
        EEGNetV4(2, 54, 4, pool1_kernel_size=8, pool2_kernel_size=8)


def test_atms_d_model_too_small_for_the_convolution() -> None:
    with pytest.raises(ValueError, match=r"^ATMS: d_model must be at least 75 \(samples, .*got 74"):
        ATMS(3, 10, 4, d_model=74)
    assert ATMS(3, 10, 4, d_model=75, n_heads=5)(_x(3, 10)).shape == (4, 4)


@pytest.mark.parametrize(
    ("args", "options", "error", "pattern"),
    [
        (("nicer", 3, 100, 4), {}, ValueError, r"^brain_encoder: name must be one of \('nice', 'eegnetv4'"),
        (("nice", 0, 100, 4), {}, ValueError, r"^NICE: n_channels must be an int >= 1, got 0 \(int\)"),
        (("atms", 3, 100.0, 4), {}, TypeError, r"^ATMS: n_times must be an int >= 1, got 100.0 \(float\)"),
        (("mlp", 3, 100, True), {}, TypeError, r"^BrainMLP: embed_dim must be an int >= 1, got True"),
        (("nice", 3, 100, 4), {"dropout": 1.0}, ValueError, r"^NICE: dropout must be a number in \[0, 1\)"),
        (("nice", 3, 100, 4), {"output_linear": 1}, TypeError, r"^NICE: output_linear must be a bool"),
        (("eegnetv4", 3, 100, 4), {"f2": 0}, ValueError, r"^EEGNetV4: f2 must be None or an int >= 1"),
        (("eegnetv4", 3, 100, 4), {"conv_spatial_max_norm": 0}, ValueError, r"conv_spatial_max_norm must be"),
        (
            ("atms", 3, 100, 4),
            {"n_heads": 251},
            ValueError,
            r"^ATMS: n_heads must be at most d_model \(250\)",
        ),
        (
            ("nice", 3, 100, 4),
            {"n_heads": 4},
            TypeError,
            r"options \['n_heads'\] are not options of 'nice' \(NICE\); its options are n_filters, ",
        ),
    ],
)
def test_bad_construction(args: tuple, options: dict, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        brain_encoder(*args, **options)


def test_atms_subject_checks() -> None:
    m = _encoder("atms", 3, 100, n_subjects=4)
    x = _x(3, 100)
    assert m(x, torch.tensor([0, 3, 1, 2])).shape == (4, D)
    with pytest.raises(ValueError, match=r"^ATMS.forward: subject must hold ids in \[0, 4\) .*from 0 to 4"):
        m(x, torch.tensor([0, 4, 1, 2]))
    with pytest.raises(ValueError, match=r"^ATMS.forward: subject must have shape \(4,\) \(x's batch\)"):
        m(x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"^ATMS.forward: subject must be an int64 or int32 tensor"):
        m(x, torch.zeros(4))
    with pytest.raises(ValueError, match=r"^ATMS.forward: subject must be None \(built with n_subjects=0\)"):
        _encoder("atms", 3, 100)(x, torch.zeros(4, dtype=torch.int64))


def test_atms_subject_tokens_are_per_sample() -> None:
    m = _encoder("atms", 3, 100, n_subjects=3).eval()
    x = _x(3, 100)
    both = m(x, torch.tensor([0, 0, 2, 2]))
    torch.testing.assert_close(both[:2], m(x[:2], torch.tensor([0, 0])))
    torch.testing.assert_close(both[2:], m(x[2:], torch.tensor([2, 2])))
    assert not torch.allclose(both[:2], m(x[:2], torch.tensor([2, 2])))


def test_eegnet_max_norm_constrains_the_used_weights_only() -> None:
    m = _encoder("eegnetv4", 5, 64, final_max_norm=0.25).eval()
    with torch.no_grad():
        m.conv_spatial.weight.mul_(10.0)
        m.projection.weight.mul_(100.0)
    stored = m.conv_spatial.weight.detach().clone()
    x = _x(5, 64)
    out = m(x)
    assert torch.equal(m.conv_spatial.weight, stored)  # a parametrization: the stored weight is kept
    plain = EEGNetV4(5, 64, D)
    state = m.state_dict()
    for key in ("conv_spatial.weight", "projection.weight"):
        limit = 1.0 if key.startswith("conv") else 0.25
        norms = state[key].flatten(1).norm(dim=1)
        assert (norms > limit).all()
        state[key] = state[key] * (limit / norms).view(-1, *[1] * (state[key].dim() - 1))
    plain.load_state_dict(state)
    torch.testing.assert_close(out, plain.eval()(x), rtol=1e-5, atol=1e-6)


def _module_path(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The encoder with its TemporalSpatialConv's layers run as modules (a no-op hook on the temporal
    convolution forces the fallback)."""
    handle = encoder.conv.tsconv[0].register_forward_hook(lambda *_: None)
    try:
        return encoder(x)
    finally:
        handle.remove()


@pytest.mark.parametrize("name", ["nice", "atms"])
@pytest.mark.parametrize(("c", "t"), [(63, 250), (5, 80)])
def test_fused_temporal_stage_matches_the_module_path(name: str, c: int, t: int) -> None:
    """Forward and every gradient (input and weights) in float64, training mode (batch statistics)."""
    fused = _encoder(name, c, t, **ZERO_DROPOUT[name]).double()
    plain = _encoder(name, c, t, **ZERO_DROPOUT[name]).double()
    assert fused.conv._fused_temporal(_x(c, t, dtype=torch.float64)) is not None
    x = _x(c, t, b=6, dtype=torch.float64).requires_grad_()
    x_plain = x.detach().clone().requires_grad_()
    out = fused(x)
    ref = _module_path(plain, x_plain)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_plain.grad, rtol=1e-12, atol=1e-12)
    # atol 1e-11: the temporal bias's gradient is 0 analytically (the training-mode batch norm after the
    # pool subtracts it), so both paths give rounding noise of ~1e-12 there
    for (key, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-11, msg=key)
    torch.testing.assert_close(fused.state_dict(), plain.state_dict(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["nice", "atms"])
def test_fused_temporal_stage_draws_the_same_dropout_masks(name: str) -> None:
    """Same seed, same dropped units: the fused output has the module path's memory layout."""
    fused = _encoder(name, 5, 80).double().train()
    plain = _encoder(name, 5, 80).double().train()
    x = _x(5, 80, dtype=torch.float64)
    torch.manual_seed(3)
    out = fused(x)
    torch.manual_seed(3)
    torch.testing.assert_close(out, _module_path(plain, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("kind", ["forward", "pre", "backward"])
def test_fused_temporal_stage_runs_the_modules_under_hooks(layer: int, kind: str) -> None:
    """Grad-CAM hooks the temporal convolution: a hook on it or on the pool sees their real tensors."""
    m = _encoder("nice", 5, 80, **ZERO_DROPOUT["nice"]).eval()
    module = m.conv.tsconv[layer]
    seen: list[torch.Tensor] = []
    if kind == "forward":
        handle = module.register_forward_hook(lambda _, __, out: out * 0)
    elif kind == "pre":
        handle = module.register_forward_pre_hook(lambda _, args: (args[0] * 0,))
    else:
        handle = module.register_full_backward_hook(lambda _, grad_in, grad_out: seen.append(grad_out[0]))
    x = _x(5, 80).requires_grad_()
    assert m.conv._fused_temporal(x) is None
    out = m(x)
    handle.remove()
    assert m.conv._fused_temporal(x) is not None
    if kind == "backward":
        out.sum().backward()
        assert len(seen) == 1 and seen[0].shape[:2] == (4, 40)
    else:  # the zeroed output reaches the result: constant across samples
        torch.testing.assert_close(out, out[:1].expand_as(out))
        assert not torch.allclose(m(x), out)


@pytest.mark.parametrize(
    ("layer", "change"),
    [
        (0, {"padding": (0, 2)}),
        (0, {"dilation": (1, 2)}),
        (0, {"stride": (1, 2)}),
        (1, {"ceil_mode": True}),
        (1, {"padding": (0, 3)}),
        (1, {"divisor_override": 7}),
    ],
)
def test_fused_temporal_stage_refuses_other_configurations(layer: int, change: dict) -> None:
    tsc = _encoder("nice", 5, 200, **ZERO_DROPOUT["nice"]).eval().conv
    for key, value in change.items():
        setattr(tsc.tsconv[layer], key, value)
    x = _x(5, 200, dtype=torch.float32)
    assert tsc._fused_temporal(x) is None
    expected = tsc.projection(tsc.tsconv(x.unsqueeze(1))).permute(0, 2, 3, 1).flatten(1)
    torch.testing.assert_close(tsc(x), expected)


def test_fused_temporal_stage_without_bias() -> None:
    tsc = _encoder("nice", 5, 80, **ZERO_DROPOUT["nice"]).double().eval().conv
    tsc.tsconv[0].bias = None
    x = _x(5, 80, dtype=torch.float64)
    fused = tsc._fused_temporal(x)
    assert fused is not None
    torch.testing.assert_close(fused, tsc.tsconv[1](tsc.tsconv[0](x.unsqueeze(1))), rtol=1e-12, atol=1e-12)


def test_nice_compiles_a_training_step() -> None:
    """fullgraph: the input checks and the layers trace without graph breaks, forward and backward
    (aot_eager: inductor's code generation takes about a minute on two CPU cores); a bad input still
    raises the input check's message (wrapped by dynamo under fullgraph)."""
    torch._dynamo.reset()
    m = _encoder("nice", 17, 100, **ZERO_DROPOUT["nice"])
    eager = _encoder("nice", 17, 100, **ZERO_DROPOUT["nice"])
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    x = _x(17, 100)
    compiled(x).square().sum().backward()
    eager(x).square().sum().backward()
    for (name, p), q in zip(m.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    torch.testing.assert_close(m.conv.tsconv[2].running_mean, eager.conv.tsconv[2].running_mean)
    with pytest.raises(Exception, match=r"NICE.forward: x must have shape \(B, 17, 100\)"):
        compiled(_x(16, 100))


def test_names_and_factory() -> None:
    assert ENCODERS == ("nice", "eegnetv4", "atms", "mlp")
    classes = {name: type(_encoder(name, 3, 100)) for name in ENCODERS}
    assert classes == {"nice": NICE, "eegnetv4": EEGNetV4, "atms": ATMS, "mlp": BrainMLP}
    assert re.search(r"n_channels=3, n_times=100, embed_dim=24", repr(_encoder("nice", 3, 100)))
