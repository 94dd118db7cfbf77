"""Long recordings → segments no longer than a model's training utterances.

Speech regions come from voice-activity detection: Silero VAD (the ``silero-vad`` package, whose model
ships in its wheel and runs on the torch already installed) or, when it is not installed or not wanted,
an energy detector. Regions are then packed greedily into segments of at most ``max_seconds`` (a region
longer than that is cut at its quietest frame), and boundaries are snapped to video frames (40 ms) so
that audio and mouth video are cut at the same times. Without audio (lip reading), a recording is cut
into equal pieces.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np

from llama_avsr.media import SAMPLE_RATE, VIDEO_FPS

log = logging.getLogger(__name__)

VAD_BACKENDS = ("auto", "silero", "energy")
#: boundaries fall on video frames so that both streams are cut at the same instant
FRAME = 1.0 / VIDEO_FPS
#: energy detector: 30 ms windows every 10 ms; a frame is speech above max(floor + 12 dB, peak − 45 dB)
_WIN, _HOP = 480, 160
_FLOOR_DB, _RANGE_DB = 12.0, 45.0
#: speech regions: pauses shorter than this are bridged, regions shorter than this dropped, padding kept
MIN_PAUSE, MIN_SPEECH, PAD = 0.3, 0.15, 0.1


@functools.lru_cache(maxsize=1)
def _silero():
    from silero_vad import load_silero_vad

    return load_silero_vad()


def silero_available() -> bool:
    try:
        import silero_vad  # noqa: F401
    except ImportError:
        return False
    return True


def speech_regions(audio: np.ndarray, backend: str = "auto") -> list[tuple[float, float]]:
    """(start, end) seconds of speech in a 16 kHz waveform, in order, padded by ``PAD``."""
    if backend not in VAD_BACKENDS:
        raise ValueError(f"unknown VAD backend {backend!r}; choose from {VAD_BACKENDS}")
    if backend == "silero" or (backend == "auto" and silero_available()):
        regions = _silero_regions(audio)
    else:
        regions = _energy_regions(audio)
    dur = len(audio) / SAMPLE_RATE
    return [(max(0.0, s - PAD), min(dur, e + PAD)) for s, e in regions]


def _silero_regions(audio: np.ndarray) -> list[tuple[float, float]]:
    import torch
    from silero_vad import get_speech_timestamps

    with torch.no_grad():
        stamps = get_speech_timestamps(
            torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
            _silero(),
            sampling_rate=SAMPLE_RATE,
            min_silence_duration_ms=int(MIN_PAUSE * 1000),
            min_speech_duration_ms=int(MIN_SPEECH * 1000),
            speech_pad_ms=0,
        )
    return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]


def frame_energy_db(audio: np.ndarray) -> np.ndarray:
    """Log energy (dB) of 30 ms windows every 10 ms. (T,) → (N,)"""
    if len(audio) < _WIN:
        audio = np.pad(audio, (0, _WIN - len(audio)))
    n = 1 + (len(audio) - _WIN) // _HOP
    idx = np.arange(_WIN)[None] + _HOP * np.arange(n)[:, None]
    return 10 * np.log10(np.mean(audio[idx].astype(np.float64) ** 2, axis=1) + 1e-12)


def _energy_regions(audio: np.ndarray) -> list[tuple[float, float]]:
    """Frames above an adaptive threshold (relative to the noise floor and to the peak), pauses shorter
    than ``MIN_PAUSE`` bridged, blips shorter than ``MIN_SPEECH`` dropped."""
    db = frame_energy_db(audio)
    floor, peak = np.percentile(db, 10), db.max()
    speech = db > max(floor + _FLOOR_DB, peak - _RANGE_DB)
    hop = _HOP / SAMPLE_RATE
    regions: list[list[float]] = []
    for i in np.flatnonzero(speech):
        t = i * hop
        if regions and t - regions[-1][1] < MIN_PAUSE:
            regions[-1][1] = t + _WIN / SAMPLE_RATE
        else:
            regions.append([t, t + _WIN / SAMPLE_RATE])
    return [(s, e) for s, e in regions if e - s >= MIN_SPEECH]


def _snap(t: float, up: bool) -> float:
    f = t / FRAME
    return (math.ceil(f - 1e-6) if up else math.floor(f + 1e-6)) * FRAME


def quietest_between(audio: np.ndarray, lo: float, hi: float) -> float:
    """The centre (s, on a video frame) of the quietest 30 ms window of ``audio`` between ``lo`` and ``hi``."""
    a, b = int(lo * SAMPLE_RATE), int(hi * SAMPLE_RATE)
    db = frame_energy_db(audio[a:b])
    return min(
        _snap((a + int(np.argmin(db)) * _HOP + _WIN // 2) / SAMPLE_RATE, up=False), _snap(hi, up=False)
    )


def _quietest_cut(audio: np.ndarray | None, start: float, end: float, max_seconds: float) -> float:
    """Where to cut [start, end) (longer than ``max_seconds``): the quietest frame in the second half of
    the first ``max_seconds`` (so both parts keep whole words where there is a pause), or at the limit."""
    if audio is None:
        return _snap(start + max_seconds, up=False)
    return quietest_between(audio, start + max_seconds / 2, start + max_seconds)


def plan_segments(
    audio: np.ndarray | None,
    duration: float,
    max_seconds: float,
    vad: str = "auto",
) -> list[tuple[float, float]]:
    """Segments (start, end) in seconds, in order, each at most ``max_seconds`` long, on 40 ms frame
    boundaries inside [0, duration].

    audio: the 16 kHz waveform, or ``None`` (video only: equal pieces).
    A recording no longer than ``max_seconds`` is one segment, whole. With audio, only speech regions
    are kept (an empty list: no speech found).
    """
    if max_seconds < 2 * FRAME:
        raise ValueError(f"max_seconds must be at least {2 * FRAME:g} s, got {max_seconds}")
    end_all = _snap(duration, up=False) if duration > FRAME else duration
    if duration <= max_seconds:
        return [(0.0, duration)]
    if audio is None:
        n = math.ceil(duration / max_seconds)
        bounds = [round(_snap(duration * k / n, up=False), 3) for k in range(n)] + [duration]
        return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    regions = [(_snap(s, up=False), min(_snap(e, up=True), end_all)) for s, e in speech_regions(audio, vad)]
    segments: list[tuple[float, float]] = []
    for s, e in regions:
        if e <= s:
            continue
        if segments and e - segments[-1][0] <= max_seconds + 1e-6:
            segments[-1] = (segments[-1][0], max(e, segments[-1][1]))  # pack into the open segment
            continue
        if segments and s < segments[-1][1]:  # padded regions may overlap a closed segment
            s = segments[-1][1]
        while e - s > max_seconds + 1e-6:
            cut = _quietest_cut(audio, s, e, max_seconds)
            segments.append((s, cut))
            s = cut
        segments.append((s, e))
    return [(round(a, 3), round(b, 3)) for a, b in segments if b - a >= FRAME]
