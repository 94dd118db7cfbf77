"""PyAV I/O: round trips, the fast gray path, resampling and clear errors for unusable files."""

from __future__ import annotations

import av
import numpy as np
import pytest

from llama_avsr import media


def test_gray_fast_path_is_identical_to_swscale(tmp_path):
    frames = (np.random.default_rng(0).random((12, 64, 80)) * 255).astype(np.uint8)
    path = tmp_path / "v.mp4"
    media.write_video(path, frames, 25)
    fast, fps = media.read_video(path, gray=True)
    with av.open(str(path)) as c:
        ref = np.stack([f.to_ndarray(format="gray") for f in c.decode(c.streams.video[0])])
    assert fps == 25 and fast.shape == (12, 64, 80)
    np.testing.assert_array_equal(fast, ref)


def test_video_with_audio_round_trip_and_resampling(tmp_path):
    sr = 44_100
    t = np.arange(2 * sr) / sr
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    frames = np.full((60, 48, 48, 3), 128, np.uint8)
    path = tmp_path / "av.mp4"
    media.write_video(path, frames, 30, audio=media.resample(tone, sr))
    audio = media.read_audio(path)
    assert abs(len(audio) - 32_000) < 2_048  # AAC adds encoder priming samples
    assert 0.15 < audio.std() < 0.3
    video, fps = media.read_video(path)
    assert video.shape == (60, 48, 48, 3) and fps == 30
    assert len(media.resample_frames(video, fps, 25)) == 50


def test_wav_at_another_rate_is_resampled(tmp_path):
    media.write_wav(tmp_path / "a.wav", np.zeros(22_050, np.float32) + 0.1, 22_050)
    assert len(media.read_audio(tmp_path / "a.wav")) == 16_000


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b""), "file is empty"),
        (lambda p: p.write_bytes(b"garbage" * 100), "cannot open"),
    ],
)
def test_unusable_files_raise_media_error_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "bad.mp4"
    make(path)
    with pytest.raises(media.MediaError, match=reason) as e:
        media.read_video(path)
    assert str(path) in str(e.value)


def test_video_without_audio_track(tmp_path):
    path = tmp_path / "silent.mp4"
    media.write_video(path, np.zeros((5, 32, 32), np.uint8), 25)
    with pytest.raises(media.MediaError, match="no audio track"):
        media.read_audio(path)
