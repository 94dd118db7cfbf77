"""Audio and video I/O with PyAV (bundled FFmpeg): decode, resample, encode.

Conventions used across the project:

- audio: float32 mono waveform in [-1, 1], shape (T,), at ``SAMPLE_RATE`` (16 kHz) unless stated;
- video: uint8 frames, shape (T, H, W, 3) RGB or (T, H, W) gray, with a frame rate.

Every reader raises :class:`MediaError` naming the file for anything unreadable (missing, corrupt,
empty, no stream of the requested kind), so batch jobs can skip and report the item.
"""

from __future__ import annotations

import logging
import os
import tempfile
import wave
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from scipy.signal import resample_poly

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
VIDEO_FPS = 25


class MediaError(ValueError):
    """An audio or video file that cannot be used (the message names the file and the reason)."""


def _open(path: str | Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: file is empty")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(f"{path}: cannot open as audio/video ({e})") from e


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling of a 1-D waveform. (T,) → (T·target/orig,)"""
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    g = np.gcd(int(orig_sr), int(target_sr))
    return resample_poly(audio, target_sr // g, orig_sr // g).astype(np.float32)


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any file PyAV reads (wav, flac, mp3, mp4, …) to mono float32 at
    ``sample_rate``; other rates are resampled, channels are averaged. Returns (T,)."""
    path = Path(path)
    with _open(path) as c:
        if not c.streams.audio:
            raise MediaError(f"{path}: no audio track")
        stream = c.streams.audio[0]
        chunks: list[np.ndarray] = []
        rate = None
        try:
            for frame in c.decode(stream):
                rate = frame.sample_rate
                arr = frame.to_ndarray()
                if arr.dtype.kind in "iu":
                    arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
                arr = arr.astype(np.float32, copy=False)
                if frame.format.is_planar:
                    arr = arr.mean(axis=0)  # (C, n) → (n,)
                else:
                    arr = arr.reshape(-1, len(frame.layout.channels)).mean(axis=1)
                chunks.append(arr)
        except av.error.FFmpegError as e:
            raise MediaError(f"{path}: corrupt audio stream ({e})") from e
    if not chunks or rate is None:
        raise MediaError(f"{path}: audio track holds no samples")
    return resample(np.concatenate(chunks), rate, sample_rate)


def video_info(path: str | Path) -> tuple[int, float, int, int]:
    """(frame count (container estimate, may be 0), fps, width, height) without decoding."""
    path = Path(path)
    with _open(path) as c:
        if not c.streams.video:
            raise MediaError(f"{path}: no video track")
        s = c.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or VIDEO_FPS)
        return int(s.frames or 0), fps, s.codec_context.width, s.codec_context.height


#: planar YUV formats whose first plane is the luma we can read directly for gray frames
_YUV_PLANAR = {"yuv420p", "yuv422p", "yuv444p", "yuvj420p", "yuvj422p", "yuvj444p"}
_JPEG_RANGE = 2  # AVCOL_RANGE_JPEG: full-range luma


def _gray(frame: av.VideoFrame) -> np.ndarray:
    """Luma of a frame as full-range gray uint8. For planar YUV the Y plane is read directly (about 20×
    faster than a swscale conversion and bit-identical to it); other formats go through swscale."""
    if frame.format.name not in _YUV_PLANAR:
        return frame.to_ndarray(format="gray")
    plane = frame.planes[0]
    y = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
    if frame.format.name.startswith("yuvj") or getattr(frame, "color_range", 0) == _JPEG_RANGE:
        return y.copy()
    # limited (TV) range 16–235 → full range 0–255, as swscale does for format="gray"
    return np.clip(np.round((y.astype(np.float32) - 16.0) * (255.0 / 219.0)), 0, 255).astype(np.uint8)


def read_video(path: str | Path, gray: bool = False) -> tuple[np.ndarray, float]:
    """Decode all frames: ((T, H, W, 3) RGB uint8 or (T, H, W) gray uint8, fps)."""
    path = Path(path)
    with _open(path) as c:
        if not c.streams.video:
            raise MediaError(f"{path}: no video track")
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or VIDEO_FPS)
        try:
            frames = [_gray(f) if gray else f.to_ndarray(format="rgb24") for f in c.decode(stream)]
        except av.error.FFmpegError as e:
            raise MediaError(f"{path}: corrupt video stream ({e})") from e
    if not frames:
        raise MediaError(f"{path}: video track holds no frames")
    return np.stack(frames), fps


def resample_frames(frames: np.ndarray, fps: float, target_fps: float = VIDEO_FPS) -> np.ndarray:
    """Nearest-frame temporal resampling (what FFmpeg's fps filter does): (T, …) → (T·target/fps, …)."""
    if abs(fps - target_fps) < 1e-3:
        return frames
    n_out = max(1, int(round(len(frames) * target_fps / fps)))
    idx = np.minimum((np.arange(n_out) * fps / target_fps + 1e-6).astype(int), len(frames) - 1)
    return frames[idx]


def _atomic_target(path: Path) -> tuple[Path, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    # mkstemp creates 0600; give the final file the usual permissions
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return path, Path(tmp)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono 16-bit PCM wav atomically. audio: (T,) float in [-1, 1]."""
    path, tmp = _atomic_target(Path(path))
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    try:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm.tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float = VIDEO_FPS,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    crf: int = 18,
) -> None:
    """Encode frames ((T,H,W) gray or (T,H,W,3) RGB uint8) as H.264 mp4, optionally with an AAC audio
    track, atomically. Odd sizes are padded by one pixel (H.264 with yuv420p needs even sizes)."""
    path, tmp = _atomic_target(Path(path))
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError("write_video expects uint8 frames")
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as c:
            vs = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            vs.width, vs.height = frames.shape[2], frames.shape[1]
            vs.pix_fmt = "yuv420p"
            # one encoder thread: x264 output then depends only on the frames (byte-identical reruns)
            vs.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
            as_ = None
            if audio is not None:
                as_ = c.add_stream("aac", rate=sample_rate)
                as_.layout = "mono"
            for fr in frames:
                # our own RGB → YUV 4:2:0 (BT.601, limited range, as swscale) keeps the output
                # byte-identical across runs; PyAV's swscale conversion was seen to vary
                yuv = cv2.cvtColor(np.ascontiguousarray(fr), cv2.COLOR_RGB2YUV_I420)
                for pkt in vs.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p")):
                    c.mux(pkt)
            for pkt in vs.encode():
                c.mux(pkt)
            if as_ is not None:
                pcm = np.clip(np.asarray(audio, dtype=np.float32), -1, 1)[None, :]
                step = 1024
                for i in range(0, pcm.shape[1], step):
                    af = av.AudioFrame.from_ndarray(
                        np.ascontiguousarray(pcm[:, i : i + step]), format="fltp", layout="mono"
                    )
                    af.sample_rate = sample_rate
                    af.pts = i
                    for pkt in as_.encode(af):
                        c.mux(pkt)
                for pkt in as_.encode():
                    c.mux(pkt)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
