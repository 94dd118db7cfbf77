"""Corpus reading: the LRS3-style layout of auto_avsr and its five-field label CSV.

Layout: ``<root>/<dataset_name>/<rel_path>`` is a 25 fps mouth-ROI video (``.mp4``) and the 16 kHz audio
lies beside it as the same path with ``.wav``.  Label CSV, one utterance a line, no header::

    dataset_name,rel_path,input_length,token_ids,text
    lrs3_video_seg16s,test/0Fi83BHQsMA/00002.mp4,85,1 2 3,some words here

``input_length`` is the number of video frames (25 fps), ``token_ids`` (auto_avsr sentencepiece ids) is
not used, ``text`` is the lowercase transcript.  Lines are split on the first four commas only, so a
transcript that does contain a comma is kept whole.

Files are not opened here: a missing or unreadable file is found (and reported) when the dataset loads
the item, so reading the labels of a large corpus stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llama_avsr import media

log = logging.getLogger(__name__)

#: file extensions treated as audio-only by :func:`utterance_from_file`
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac"})

#: audio samples per video frame (16 kHz / 25 fps)
SAMPLES_PER_FRAME = media.SAMPLE_RATE // media.VIDEO_FPS


@dataclass(frozen=True)
class Utterance:
    """One item of a corpus.

    id: unique name (``<dataset_name>/<rel_path without extension>`` for CSV corpora).
    video: mouth-ROI video path, or ``None`` for an audio-only item.
    audio: audio path, or ``None`` to use the audio track of ``video``.  For CSV corpora this is the
        ``.wav`` beside the video; when that file does not exist the dataset falls back to the video's
        own audio track.
    n_frames: length in video frames at 25 fps (used for batching; audio-only items: duration · 25).
    text: transcript ("" when unknown, e.g. at inference).
    """

    id: str
    video: Path | None
    audio: Path | None
    n_frames: int
    text: str = ""

    def audio_source(self) -> Path:
        """The file to read audio from: the audio path when it exists, else the video's own track."""
        if self.audio is not None and (self.video is None or self.audio.is_file()):
            return self.audio
        if self.video is not None:
            return self.video
        raise ValueError(f"utterance {self.id!r} has neither an audio nor a video path")


@dataclass(frozen=True)
class Problem:
    """A label line that could not be used: ``where`` is ``file:line``."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class LabelError(ValueError):
    """A malformed label file (raised by :func:`read_labels` with ``strict=True``)."""


class PackedStrings:
    """Strings in one UTF-8 byte buffer plus offsets.

    A list of a million ``str``/``Path`` objects is copied page by page into every forked DataLoader
    worker as reference counts are touched; two numpy arrays are not.
    """

    def __init__(self, strings: Iterable[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._buf = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._buf[self._offsets[i] : self._offsets[i + 1]].tobytes().decode("utf-8")


class PackedUtterances(Sequence[Utterance]):
    """A read-only, fork-friendly sequence of utterances (see :class:`PackedStrings`).

    n_frames: (N,) int64, the lengths for batching.
    """

    def __init__(self, utterances: Iterable[Utterance]) -> None:
        utts = list(utterances)
        self._ids = PackedStrings(u.id for u in utts)
        self._videos = PackedStrings("" if u.video is None else str(u.video) for u in utts)
        self._audios = PackedStrings("" if u.audio is None else str(u.audio) for u in utts)
        self._texts = PackedStrings(u.text for u in utts)
        self.n_frames = np.array([u.n_frames for u in utts], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.n_frames)

    def __getitem__(self, i: int) -> Utterance:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]  # type: ignore[return-value]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"utterance index {i} out of range for {len(self)} utterances")
        video, audio = self._videos[i], self._audios[i]
        return Utterance(
            id=self._ids[i],
            video=Path(video) if video else None,
            audio=Path(audio) if audio else None,
            n_frames=int(self.n_frames[i]),
            text=self._texts[i],
        )

    def __iter__(self) -> Iterator[Utterance]:
        return (self[i] for i in range(len(self)))


def parse_label_line(line: str, root: Path) -> Utterance:
    """One CSV line → :class:`Utterance`; raises ``ValueError`` with the reason when malformed."""
    fields = line.split(",", 4)
    if len(fields) != 5:
        raise ValueError(
            f"expected 5 comma-separated fields (dataset_name,rel_path,input_length,token_ids,text), "
            f"got {len(fields)}"
        )
    dataset_name, rel_path, length, _token_ids, text = (f.strip() for f in fields)
    if not dataset_name or not rel_path:
        raise ValueError("empty dataset_name or rel_path")
    try:
        n_frames = int(length)
    except ValueError:
        raise ValueError(f"input_length {length!r} is not an integer") from None
    if n_frames <= 0:
        raise ValueError(f"input_length must be positive, got {n_frames}")
    video = root / dataset_name / rel_path
    return Utterance(
        id=f"{dataset_name}/{Path(rel_path).with_suffix('').as_posix()}",
        video=video,
        audio=video.with_suffix(".wav"),
        n_frames=n_frames,
        text=text,
    )


def read_labels(
    csv: str | Path, root: str | Path, strict: bool = False
) -> tuple[list[Utterance], list[Problem]]:
    """Read a label CSV.

    Returns the utterances and the problems found (malformed lines, non-UTF-8 bytes, duplicate ids),
    each naming ``file:line``; problem lines are skipped and logged.  ``strict=True`` raises
    :class:`LabelError` on the first problem instead.
    """
    csv, root = Path(csv), Path(root)
    if not csv.is_file():
        raise FileNotFoundError(f"label file not found: {csv}")
    utterances: list[Utterance] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    # bytes, decoded line by line: one bad byte costs one line, not the whole file
    for lineno, raw in enumerate(csv.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            reason = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
            _problem(problems, Problem(f"{csv}:{lineno}", reason), strict)
            continue
        line = line.removeprefix("\ufeff") if lineno == 1 else line
        if not line.strip():
            continue
        try:
            utt = parse_label_line(line, root)
        except ValueError as e:
            _problem(problems, Problem(f"{csv}:{lineno}", str(e)), strict)
            continue
        if utt.id in seen:
            _problem(problems, Problem(f"{csv}:{lineno}", f"duplicate utterance {utt.id!r}"), strict)
            continue
        seen.add(utt.id)
        utterances.append(utt)
    if problems:
        log.warning("%s: skipped %d of %d label lines", csv, len(problems), len(problems) + len(utterances))
    return utterances, problems


def _problem(problems: list[Problem], p: Problem, strict: bool) -> None:
    if strict:
        raise LabelError(str(p))
    log.warning("%s (line skipped)", p)
    problems.append(p)


def utterance_from_file(path: str | Path, text: str = "", id: str | None = None) -> Utterance:
    """An utterance from one user file, for inference.

    An audio file (by extension: wav, flac, mp3, …) gives an audio-only item; anything else is taken as
    a mouth-ROI video, with audio from a ``.wav`` beside it when there is one, else from its own audio
    track.  The length is probed (container header for video, a decode for audio) so batching works.
    Raises :class:`~llama_avsr.media.MediaError` for an unreadable file.
    """
    path = Path(path)
    uid = id if id is not None else path.stem
    if path.suffix.lower() in AUDIO_EXTENSIONS:
        n = len(media.read_audio(path))
        return Utterance(uid, video=None, audio=path, n_frames=max(1, -(-n // SAMPLES_PER_FRAME)), text=text)
    count, fps, _, _ = media.video_info(path)
    n_frames = max(1, round(count * media.VIDEO_FPS / fps)) if count else 1
    return Utterance(uid, video=path, audio=path.with_suffix(".wav"), n_frames=n_frames, text=text)


def utterances_from_files(paths: Iterable[str | Path]) -> list[Utterance]:
    """:func:`utterance_from_file` for each path; ids are the file stems, made unique when they clash."""
    out: list[Utterance] = []
    seen: dict[str, int] = {}
    for p in paths:
        stem = Path(p).stem
        k = seen.get(stem, 0)
        seen[stem] = k + 1
        out.append(utterance_from_file(p, id=stem if k == 0 else f"{stem}-{k}"))
    return out
