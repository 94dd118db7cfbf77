"""The light from-scratch lip-reading encoder (``kind: lipconv``): shapes, lengths, padding, registry."""

from __future__ import annotations

import pytest
import torch

from llama_avsr.config import EncoderConfig
from llama_avsr.models.encoders import ENCODERS, build_encoder


def _enc(**options) -> torch.nn.Module:
    return build_encoder(EncoderConfig(kind="lipconv", arch="lipconv-demo", frozen=False, options=options))


def test_registered_and_shapes() -> None:
    assert "lipconv" in ENCODERS
    enc = _enc().eval()
    video = torch.randn(3, 20, 1, 88, 88)
    lens = torch.tensor([20, 13, 7])
    feats, out_lens = enc({"video": video}, {"video": lens})
    assert feats.shape == (3, 20, enc.output_dim) and enc.output_dim == 256
    assert torch.equal(out_lens, lens) and enc.frame_rate == 25.0
    assert torch.all(feats[1, 13:] == 0) and torch.all(feats[2, 7:] == 0)  # padding frames stay empty


FRONT_ENDS = {
    "conv stem, post-norm blocks": {"input_size": 44, "widths": [16, 32, 64], "prenorm": False},
    "conv stem, raw frames": {"input_size": 44, "widths": [16, 32, 64], "subtract_mean": False},
    "pixels, pre-norm blocks": {"input_size": 22, "widths": [], "prenorm": True},
}


@pytest.mark.parametrize("options", FRONT_ENDS.values(), ids=FRONT_ENDS.keys())
def test_item_does_not_depend_on_its_batch(options: dict) -> None:
    """An utterance's features are the same alone and next to a longer one (padding leaks nowhere)."""
    torch.manual_seed(0)
    enc = _enc(**options).eval()
    a, b = torch.randn(1, 9, 1, 88, 88), torch.randn(1, 16, 1, 88, 88)
    alone, _ = enc({"video": a}, {"video": torch.tensor([9])})
    padded = torch.cat([torch.cat([a, torch.randn(1, 7, 1, 88, 88)], 1), b])  # garbage in a's padding
    both, _ = enc({"video": padded}, {"video": torch.tensor([9, 16])})
    # float32 convolutions of batches of 1 and 2 round differently (~1e-5); leaked padding would be O(1)
    torch.testing.assert_close(both[0, :9], alone[0], atol=1e-4, rtol=1e-3)


def _talking_mouth(frames: int = 50) -> torch.Tensor:
    """Rendered mouth crops (1, T, 1, 88, 88), normalised as the data pipeline does, of lips going
    through a few visemes (no espeak-ng needed)."""
    import numpy as np

    from llama_avsr.data.transforms import VIDEO_MEAN, VIDEO_STD
    from llama_avsr.synth import lips

    phonemes = [("_", 0.0, 0.2), ("m", 0.2, 0.3), ("aI", 0.3, 0.6), ("w", 0.6, 0.7), ("i:", 0.7, 1.0)]
    phonemes += [("f", 1.0, 1.1), ("u:", 1.1, 1.4), ("s", 1.4, 1.6), ("_", 1.6, 2.0)]
    track = lips.viseme_track(phonemes, frames)
    app = lips.Appearance.sample(np.random.default_rng(1))
    roi = lips.render_roi(track, app, np.random.default_rng(2))[:, 4:92, 4:92]
    x = torch.from_numpy(roi).float() / 255.0
    return ((x - VIDEO_MEAN) / VIDEO_STD)[None, :, None]


@pytest.mark.parametrize(
    ("center", "options"),
    [(True, o) for o in FRONT_ENDS.values()] + [(False, FRONT_ENDS["conv stem, post-norm blocks"])],
    ids=[*FRONT_ENDS.keys(), "conv stem, post-norm blocks, not centred"],
)
def test_features_follow_the_lips_not_the_face(center: bool, options: dict) -> None:
    """With the features centred per utterance (the default), a randomly initialised encoder's output
    moves with the lips and differs from that of a blank video; without it the static part of every
    frame dominates and the per-frame LayerNorm leaves a near-constant (measured 0.07 of the features'
    size over time, 0.06 from a blank video; a demo model trained so read its video as a constant)."""
    torch.manual_seed(0)
    enc = _enc(center_features=center, **options).eval()
    video = _talking_mouth()
    lens = torch.tensor([video.shape[1]])
    with torch.no_grad():
        f, _ = enc({"video": video}, {"video": lens})
        g, _ = enc({"video": torch.zeros_like(video)}, {"video": lens})
    moving = float(f[0].std(0).norm() / f[0].norm(dim=-1).mean())
    from_blank = float((f - g).norm() / f.norm())
    if center:
        assert moving > 0.5 and from_blank > 0.5, (moving, from_blank)
    else:
        assert moving < 0.25 and from_blank < 0.25, (moving, from_blank)


@pytest.mark.parametrize("options", FRONT_ENDS.values(), ids=FRONT_ENDS.keys())
def test_every_weight_learns(options: dict) -> None:
    """One backward pass reaches every parameter of each front-end (none is left dangling)."""
    enc = _enc(**options)
    feats, _ = enc({"video": torch.randn(2, 6, 1, 88, 88)}, {"video": torch.tensor([6, 4])})
    feats.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def test_trains_in_bf16_and_other_input_sizes() -> None:
    enc = build_encoder(
        EncoderConfig(
            kind="lipconv", arch="lipconv-demo", frozen=False, dtype="bfloat16", options={"input_size": 22}
        )
    )
    video = torch.randn(2, 6, 1, 88, 88)
    feats, _ = enc({"video": video}, {"video": torch.tensor([6, 4])})
    assert feats.dtype == torch.bfloat16 and feats.shape == (2, 6, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # computes in its own dtype inside autocast
        f32, _ = _enc()({"video": video}, {"video": torch.tensor([6, 4])})
    assert f32.dtype == torch.float32
    feats.float().sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_bad_configs() -> None:
    with pytest.raises(ValueError, match="from scratch"):
        build_encoder(EncoderConfig(kind="lipconv", source="some/checkpoint"))
    with pytest.raises(ValueError, match="unknown option"):
        _enc(resnet=True)
    with pytest.raises(ValueError, match="kernel"):
        _enc(kernel=4)
    with pytest.raises(ValueError, match="video only"):
        _enc()({"audio": torch.zeros(1, 16000)}, {"audio": torch.tensor([16000])})
