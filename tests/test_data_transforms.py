"""Augmentation pipelines and noise mixing at an exact SNR."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from llama_avsr import media
from llama_avsr.data.config import DataConfig
from llama_avsr.data.noise import AddNoise, NoiseError, NoiseSource, measure_snr, mix_at_snr, noise_segment
from llama_avsr.data.transforms import (
    VIDEO_MEAN,
    VIDEO_STD,
    AdaptiveTimeMask,
    Crop,
    build_pipeline,
    build_transforms,
)
from llama_avsr.models.encoders.base import layer_norm_waveform


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def speech_like(n: int, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated noise, roughly speech-shaped energy envelope, peak < 1."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + rng.uniform(0, 6)) ** 2
    return (0.2 * env * rng.standard_normal(n)).clip(-1, 1).astype(np.float32)


@pytest.fixture
def noise_wav(tmp_path: Path) -> Path:
    path = tmp_path / "babble.wav"
    media.write_wav(path, speech_like(16000 * 3, seed=7))
    return path


def frames(t: int = 50, size: int = 96) -> torch.Tensor:
    return torch.randint(0, 256, (t, size, size), dtype=torch.uint8, generator=gen(1))


# --------------------------------------------------------------------------------------------------
# video


def test_video_eval_is_centre_crop_normalised() -> None:
    x = frames()
    y = build_pipeline("test", "video", DataConfig())(x, gen())
    assert y.shape == (50, 1, 88, 88) and y.dtype == torch.float32
    expect = (x[:, 4:92, 4:92].float() / 255 - VIDEO_MEAN) / VIDEO_STD
    torch.testing.assert_close(y[:, 0], expect)


def test_video_train_random_crop_and_time_mask() -> None:
    x = frames(t=100)
    p = build_pipeline("train", "video", DataConfig())
    y = p(x, gen(3))
    assert y.shape == (100, 1, 88, 88)
    torch.testing.assert_close(y, p(x, gen(3)))  # reproducible from the generator
    assert not torch.equal(y, p(x, gen(4)))
    masked_value = (0.0 - VIDEO_MEAN) / VIDEO_STD
    masked = (y == masked_value).flatten(1).all(1)
    kept = y[~masked, 0]
    # unmasked frames are one 88×88 window of the input, the same window for every frame
    src = (x.float() / 255 - VIDEO_MEAN) / VIDEO_STD
    first = src[~masked][0]
    hits = [
        (i, j) for i in range(9) for j in range(9) if torch.allclose(first[i : i + 88, j : j + 88], kept[0])
    ]
    assert len(hits) == 1
    i, j = hits[0]
    torch.testing.assert_close(src[~masked][:, i : i + 88, j : j + 88], kept)
    # ceil(100/25) = 4 masks of < 10 frames each
    assert 0 < int(masked.sum()) <= 4 * 9


def test_adaptive_time_mask_statistics() -> None:
    m = AdaptiveTimeMask(6400, 16000)
    x = torch.ones(48000)
    fractions = [1 - float(m(x, gen(s)).mean()) for s in range(200)]
    # 3 masks, widths uniform in [0, 6400) → about 3·3200/48000 = 0.2 masked (less with overlaps)
    assert 0.12 < float(np.mean(fractions)) < 0.21
    assert max(fractions) <= 3 * 6399 / 48000
    assert torch.equal(m(torch.ones(0), gen()), torch.ones(0))
    assert torch.equal(x, torch.ones(48000))  # input untouched


def test_crop_rejects_small_frames() -> None:
    with pytest.raises(ValueError, match="smaller than the 88"):
        Crop(88)(torch.zeros(3, 64, 64), gen())


# --------------------------------------------------------------------------------------------------
# noise


@pytest.mark.parametrize("snr", [-5.0, 0.0, 5.0, 10.0, 20.0])
def test_mix_at_exact_snr(snr: float) -> None:
    s = torch.from_numpy(speech_like(32000))
    n = torch.from_numpy(speech_like(32000, seed=3)) * 3
    mix = mix_at_snr(s, n, snr)
    assert mix.dtype == torch.float32 and mix.shape == s.shape
    assert abs(measure_snr(s, mix) - snr) < 0.01


def test_mix_silent_inputs_unchanged() -> None:
    s = torch.zeros(100)
    assert torch.equal(mix_at_snr(s, torch.ones(100), 0.0), s)
    x = torch.ones(100)
    assert torch.equal(mix_at_snr(x, torch.zeros(100), 0.0), x)


def test_noise_segment_offset_and_loop() -> None:
    noise = torch.arange(1000, dtype=torch.float32)
    seg = noise_segment(noise, 100, gen(0))
    start = int(seg[0])
    assert torch.equal(seg, noise[start : start + 100])
    starts = {int(noise_segment(noise, 100, gen(s))[0]) for s in range(20)}
    assert len(starts) > 10  # random offsets
    long = noise_segment(noise, 2500, gen(1))
    assert long.shape == (2500,)
    assert torch.equal(long, (torch.arange(2500) + int(long[0])).remainder(1000).float())


def test_add_noise_from_file_at_requested_snr(noise_wav: Path) -> None:
    s = torch.from_numpy(speech_like(16000 * 5, seed=11))  # longer than the 3 s noise: looped
    for snr in (-5.0, 0.0, 7.5, 15.0):
        mix = AddNoise(NoiseSource(noise_wav), [snr])(s, gen(int(snr) + 10))
        assert abs(measure_snr(s, mix) - snr) < 0.1


def test_eval_pipeline_noise_at_decode_snr(noise_wav: Path) -> None:
    cfg = DataConfig(eval_noise_file=str(noise_wav), decode_snr_target=5.0)
    s = torch.from_numpy(speech_like(16000 * 2))
    noisy = build_pipeline("test", "audio", cfg)(s, gen())
    assert abs(measure_snr(s, noisy) - 5.0) < 0.1


def test_encoders_layer_normalise_each_waveform_alone() -> None:
    # the data pipeline leaves the waveform raw; Whisper / WavLM normalise it per utterance, padding aside
    a, b = torch.from_numpy(speech_like(1600, seed=1)), 3 * torch.from_numpy(speech_like(900, seed=2)) + 0.5
    wav = torch.stack([a, torch.cat([b, torch.full((700,), 9.0)])])
    out = layer_norm_waveform(wav, torch.tensor([1600, 900]))
    torch.testing.assert_close(out[0], torch.nn.functional.layer_norm(a, a.shape, eps=1e-8))
    torch.testing.assert_close(out[1, :900], torch.nn.functional.layer_norm(b, b.shape, eps=1e-8))
    assert not out[1, 900:].any()
    assert abs(float(out[1, :900].mean())) < 1e-5 and abs(float(out[1, :900].std()) - 1) < 1e-3


def test_clean_levels_never_load_noise(tmp_path: Path) -> None:
    # the default (synthetic babble) source or a bad file is never touched unless noise is drawn
    s = torch.from_numpy(speech_like(1600))
    assert torch.equal(AddNoise(NoiseSource(tmp_path / "missing.wav"), [None])(s, gen()), s)
    p = build_pipeline("val", "audio", DataConfig())
    assert p.steps == []
    train = build_pipeline("train", "audio", DataConfig())
    assert [type(step).__name__ for step in train.steps] == ["AdaptiveTimeMask", "AddNoise"]


def test_training_and_evaluation_noise_come_from_their_own_files(tmp_path: Path) -> None:
    cfg = DataConfig(
        noise_file=str(tmp_path / "train.wav"),
        eval_noise_file=str(tmp_path / "eval.wav"),
        decode_snr_target=0.0,
    )
    assert build_pipeline("train", "audio", cfg).steps[1].source.path == tmp_path / "train.wav"
    for split in ("val", "test"):
        (add,) = [s for s in build_pipeline(split, "audio", cfg).steps if isinstance(s, AddNoise)]
        assert add.source.path == tmp_path / "eval.wav"
    # without files: the synthetic babble, a different track for training and evaluation
    default = DataConfig(decode_snr_target=0.0)
    assert build_transforms("train", ["audio"], default)["audio"].steps[1].source.track == "train"
    assert build_transforms("test", ["audio"], default)["audio"].steps[0].source.track == "eval"


def test_train_audio_snr_choice_and_clean(noise_wav: Path) -> None:
    cfg = DataConfig(noise_file=str(noise_wav), train_snrs=[0.0, None])
    add = build_pipeline("train", "audio", cfg).steps[1]
    s = torch.from_numpy(speech_like(16000))
    outs = [add(s, gen(k)) for k in range(20)]
    clean = sum(torch.equal(o, s) for o in outs)
    assert 3 < clean < 17
    for o in outs:
        if not torch.equal(o, s):
            assert abs(measure_snr(s, o)) < 0.1


def test_time_masks_can_be_left_out_of_a_modalitys_training_augmentation(noise_wav: Path) -> None:
    """``data.train_time_masks=[video]``: the training audio gets noise at the drawn SNR and no silenced
    spans (every sample differs from the speech by the noise alone); the video keeps its masks."""
    cfg = DataConfig(noise_file=str(noise_wav), train_snrs=[0.0], train_time_masks=["video"])
    audio = build_pipeline("train", "audio", cfg)
    assert [type(step) for step in audio.steps] == [AddNoise]
    s = torch.from_numpy(speech_like(16000))
    for k in range(5):
        assert abs(measure_snr(s, audio(s, gen(k)))) < 0.1
    assert any(isinstance(step, AdaptiveTimeMask) for step in build_pipeline("train", "video", cfg).steps)
    masked = build_pipeline("train", "audio", DataConfig(noise_file=str(noise_wav), train_snrs=[0.0]))
    assert isinstance(masked.steps[0], AdaptiveTimeMask)  # the paper's default keeps them
    with pytest.raises(ValueError, match="train_time_masks"):
        DataConfig(train_time_masks=["speech"])


def test_bad_noise_file_is_fatal(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 10)
    with pytest.raises(NoiseError, match="bad.wav"):
        AddNoise(NoiseSource(bad), [0.0])(torch.ones(100), gen())
    media.write_wav(tmp_path / "silent.wav", np.zeros(1000, np.float32))
    with pytest.raises(NoiseError, match="silent"):
        NoiseSource(tmp_path / "silent.wav").load()


def test_noise_source_pickles_without_samples(noise_wav: Path) -> None:
    src = NoiseSource(noise_wav)
    src.load()
    clone = pickle.loads(pickle.dumps(src))
    assert clone._noise is None and clone.path == noise_wav
    torch.testing.assert_close(clone.load(), src.load())


def test_noise_resampled_to_16k(tmp_path: Path) -> None:
    media.write_wav(tmp_path / "n44.wav", speech_like(44100), sample_rate=44100)
    assert NoiseSource(tmp_path / "n44.wav").load().shape == (16000,)


def test_build_transforms_per_modality() -> None:
    t = build_transforms("train", ["audio", "video"], DataConfig())
    assert set(t) == {"audio", "video"}
    assert t["audio"].steps[1].source is not None
    with pytest.raises(ValueError, match="modality"):
        build_pipeline("train", "text", DataConfig())
    with pytest.raises(ValueError, match="split"):
        build_pipeline("dev", "audio", DataConfig())
