"""Inputs of a transcription: a file, an array or a tensor → :class:`Media` (16 kHz audio, 25 fps mouth
crops), with one error type per reason a file cannot be used.

A full-face video goes through the same preparation as ``llama-avsr prepare`` (face detection, mouth
ROI, 16 kHz audio); a video that already is a 96×96 mouth ROI (what ``prepare`` and ``synth`` write) is
read as it is, with the audio of a ``.wav`` beside it when there is one; an audio file gives audio only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llama_avsr.media import SAMPLE_RATE, VIDEO_FPS, MediaError

#: file suffixes read as audio only
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus"})
#: size of a prepared mouth ROI (``prepare`` / ``synth`` output)
ROI_SIZE = 96
#: audio samples per video frame
SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS


class UnreadableMediaError(MediaError):
    """A missing, empty or corrupt file, or one without the track a model needs."""


class NoAudioError(MediaError):
    """The model reads audio and the input has none."""


class NoVideoError(MediaError):
    """The model reads lip video and the input has none (an audio file, an audio-only array)."""


class NoFaceError(MediaError):
    """No face found in a full-face video (or in too few of its frames)."""


@dataclass
class Media:
    """One recording, ready for a model.

    audio: float32 (T_a,) at 16 kHz, or ``None``.
    video: uint8 (T_v, 96, 96) gray mouth crops at 25 fps, or ``None``.
    name: where it came from (a path, or ``<array>``), used in messages and outputs.
    """

    audio: np.ndarray | None = None
    video: np.ndarray | None = None
    name: str = "<array>"

    def __post_init__(self) -> None:
        if self.audio is None and self.video is None:
            raise UnreadableMediaError(f"{self.name}: neither audio nor video")
        if self.audio is not None:
            self.audio = np.ascontiguousarray(np.asarray(self.audio, dtype=np.float32))
            if self.audio.ndim != 1:
                raise UnreadableMediaError(f"{self.name}: audio must be 1-D (T,), got {self.audio.shape}")
        if self.video is not None:
            v = np.asarray(self.video)
            if v.ndim != 3:
                raise UnreadableMediaError(f"{self.name}: video must be (T, H, W) gray frames, got {v.shape}")
            if v.dtype != np.uint8:  # floats in [0, 1] or [0, 255]
                v = np.clip(v * (255.0 if v.size and float(v.max()) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
            self.video = np.ascontiguousarray(v)

    @property
    def duration(self) -> float:
        """Seconds: the video's length when there is one (audio is aligned to it), else the audio's."""
        if self.video is not None:
            return len(self.video) / VIDEO_FPS
        return len(self.audio) / SAMPLE_RATE


def _is_roi(path: Path) -> bool:
    from llama_avsr import media

    _, _, width, height = media.video_info(path)
    return (width, height) == (ROI_SIZE, ROI_SIZE)


def load_media(
    path: str | Path,
    modalities: Sequence[str] | None = None,
    *,
    prepared: bool | None = None,
    detector: str = "mediapipe-mesh",
) -> Media:
    """Read one file into :class:`Media`.

    modalities: what the caller needs (a model's ``modalities``); ``None`` reads whatever the file has.
        A model that reads no video never runs face detection.
    prepared: the video is a mouth ROI already (``None``: decided from its size, 96×96).
    detector: face detector backend for full-face videos.

    Raises :class:`UnreadableMediaError`, :class:`NoAudioError`, :class:`NoVideoError` or
    :class:`NoFaceError` (all :class:`~llama_avsr.media.MediaError`, one line naming the file).
    """
    from llama_avsr import media
    from llama_avsr.prepare.pipeline import PrepareError, has_audio_track

    path = Path(path)
    want = set(modalities) if modalities is not None else {"audio", "video"}
    name = str(path)
    try:
        if path.is_dir():
            raise UnreadableMediaError(f"{path}: a folder, not a file")
        if path.suffix.lower() in AUDIO_SUFFIXES:
            if modalities is not None and "video" in want:
                raise NoVideoError(f"{path}: this model reads lip video, but the file is audio only")
            return Media(audio=media.read_audio(path), name=name)
        has_audio = has_audio_track(path)
        if "video" not in want:  # an audio-only model: the file's sound track is all it needs
            source = path if has_audio else _beside_wav(path)
            if source is None:
                raise NoAudioError(f"{path}: no audio track")
            return Media(audio=media.read_audio(source), name=name)
        if "audio" in want and modalities is not None and not has_audio and not _beside_wav(path):
            raise NoAudioError(f"{path}: no audio track (this model reads audio and video)")
        if prepared if prepared is not None else _is_roi(path):
            frames, fps = media.read_video(path, gray=True)
            video = media.resample_frames(frames, fps)
            audio = None
            if "audio" in want:
                wav = _beside_wav(path)
                audio = media.read_audio(wav) if wav else (media.read_audio(path) if has_audio else None)
            return Media(audio=audio, video=video, name=name)
        from llama_avsr.prepare.pipeline import prepare_video

        rois, audio = prepare_video(path, detector, allow_no_audio=True)
        return Media(audio=audio if "audio" in want else None, video=rois, name=name)
    except PrepareError as e:
        cls = {"no_face": NoFaceError, "too_few_faces": NoFaceError, "no_audio": NoAudioError}
        raise cls.get(e.reason, UnreadableMediaError)(str(e)) from e
    except (UnreadableMediaError, NoAudioError, NoVideoError, NoFaceError):
        raise
    except MediaError as e:
        raise UnreadableMediaError(str(e)) from e
    except OSError as e:
        raise UnreadableMediaError(f"{path}: {e.strerror or e}") from e


def _beside_wav(path: Path) -> Path | None:
    wav = path.with_suffix(".wav")
    return wav if wav != path and wav.is_file() else None


def as_media(x: Any, modalities: Sequence[str] | None = None, **load_options: Any) -> Media:
    """Anything :meth:`~llama_avsr.decoding.transcriber.Transcriber.transcribe` accepts → :class:`Media`.

    A path (str / Path) is loaded with :func:`load_media`; a :class:`Media` is used as is; a mapping
    ``{"audio": …, "video": …}`` gives both; a numpy array or torch tensor is audio when 1-D (16 kHz)
    and mouth video when 3-D ((T, 96, 96) at 25 fps).
    """
    if isinstance(x, Media):
        return x
    if isinstance(x, (str, Path)):
        return load_media(x, modalities, **load_options)
    if isinstance(x, Mapping):
        unknown = set(x) - {"audio", "video", "name"}
        if unknown:
            raise ValueError(f"unknown input field(s) {sorted(unknown)}; expected 'audio' and/or 'video'")
        return Media(
            audio=_numpy(x.get("audio")), video=_numpy(x.get("video")), name=str(x.get("name", "<array>"))
        )
    arr = _numpy(x)
    if arr is None or arr.ndim not in (1, 3):
        raise ValueError(
            f"cannot transcribe {type(x).__name__}"
            + (f" of shape {arr.shape}" if arr is not None else "")
            + ": give a path, a Media, a dict, 1-D audio (16 kHz) or (T, H, W) mouth video (25 fps)"
        )
    return Media(audio=arr) if arr.ndim == 1 else Media(video=arr)


def _numpy(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)
