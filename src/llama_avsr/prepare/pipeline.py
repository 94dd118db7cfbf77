"""Raw videos → the corpus layout: mouth ROI videos, 16 kHz audio and a label CSV.

For every input video ``<rel>.<ext>`` (any size, frame rate and container PyAV reads) this writes

- ``<out>/<dataset>/<rel>.mp4``: the 96 × 96 gray mouth ROI at 25 fps (H.264),
- ``<out>/<dataset>/<rel>.wav``: the audio track, 16 kHz mono,

and one line per prepared video in ``<out>/labels/<dataset>.csv`` in the five-field format of auto_avsr,
``dataset_name,rel_path,input_length,token_ids,text``: ``rel_path`` is ``<rel>.mp4``, ``input_length``
the number of ROI frames, ``token_ids`` is ``0`` (auto_avsr's sentencepiece ids; unused here, the corpus
reader ignores the field) and ``text`` the normalised transcript of ``<stem>.txt`` beside the input video,
or empty when there is none.

Videos run in parallel (a process pool), with a progress bar. Outputs are written atomically, the wav
before the mp4, so an existing mp4 means the item is complete: a second run skips it (resume). Bad inputs
are skipped with a message naming the file and counted by reason in a final report (logged as a table
and written as JSON), or abort the run with ``fail_fast``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from llama_avsr import media
from llama_avsr.io import atomic_write_text, exclusive_lock
from llama_avsr.prepare.detectors import Detector, build_detector
from llama_avsr.prepare.roi import (
    CROP_SIZE,
    SMOOTHING_WINDOW,
    crop_mouth_rois,
    interpolate_landmarks,
    load_mean_face,
)

log = logging.getLogger(__name__)

#: extensions collected when an input is a directory
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mkv", ".avi", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv", ".ts"}
)

#: why an input was skipped
REASONS = {
    "unreadable": "missing, empty or corrupt file, or no video track",
    "no_audio": "no audio track (use --allow-no-audio to write the ROI video alone)",
    "no_face": "no face detected in any frame",
    "too_few_faces": "no face in more frames than --max-missing allows",
    "bad_name": "path unusable in the label CSV (contains a comma or a line break)",
    "error": "unexpected error",
}

#: the token-id field written to the label CSV (not used by the model; any value is accepted by the reader)
TOKEN_IDS_PLACEHOLDER = "0"


class PrepareError(ValueError):
    """A video that cannot be prepared; ``reason`` is a key of :data:`REASONS`, the message names the file."""

    def __init__(self, path: str | Path, reason: str, detail: str) -> None:
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {detail}")

    def __reduce__(self) -> tuple:  # picklable across the process pool
        return (PrepareError, (self.path, self.reason, self.detail))


@dataclass(frozen=True)
class RoiConfig:
    """How a mouth ROI is made.

    detector: backend name (see :data:`~llama_avsr.prepare.detectors.DETECTORS`).
    fps: output frame rate; inputs at another rate are resampled (nearest frame) before detection.
    max_missing: skip a video when more than this fraction of its frames has no detected face
        (frames without a face get interpolated landmarks; at 1.0 only videos with no face at all are skipped).
    mean_face: a (68, 2) ``.npy`` mean face (auto_avsr's ``20words_mean_face.npy``); ``None`` = built-in.
    """

    detector: str = "mediapipe-mesh"
    fps: float = media.VIDEO_FPS
    crop_size: int = CROP_SIZE
    window: int = SMOOTHING_WINDOW
    max_missing: float = 0.5
    mean_face: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_missing <= 1.0:
            raise ValueError(f"max_missing must be in [0, 1], got {self.max_missing}")
        if self.fps <= 0 or self.crop_size <= 0 or self.window < 0:
            raise ValueError("fps and crop_size must be positive, window non-negative")


_DETECTORS: dict[str, Detector] = {}


def _detector(name: str) -> Detector:
    """One detector per backend and process (building one loads its model)."""
    if name not in _DETECTORS:
        _DETECTORS[name] = build_detector(name)
    return _DETECTORS[name]


def has_audio_track(path: str | Path) -> bool:
    """Whether a readable media file has an audio stream."""
    try:
        with av.open(str(path)) as c:
            return bool(c.streams.audio)
    except (av.error.FFmpegError, OSError) as e:
        raise PrepareError(path, "unreadable", f"cannot open ({e})") from e


def mouth_rois(
    frames: np.ndarray, detector: Detector, config: RoiConfig, name: str | Path = "<frames>"
) -> tuple[np.ndarray, int]:
    """Detect, interpolate, smooth, align and crop. frames: (T, H, W, 3) RGB uint8 at the output rate →
    ((T, crop, crop) gray uint8, number of frames with a detected face). Raises :class:`PrepareError`
    (``no_face`` / ``too_few_faces``)."""
    landmarks = detector.detect_video(frames)
    found = sum(lm is not None for lm in landmarks)
    if found == 0:
        raise PrepareError(name, "no_face", f"no face detected in any of its {len(frames)} frames")
    missing = 1.0 - found / len(frames)
    if missing > config.max_missing:
        raise PrepareError(
            name,
            "too_few_faces",
            f"face detected in only {found} of {len(frames)} frames ({missing:.0%} missing > "
            f"max_missing {config.max_missing:.0%})",
        )
    rois = crop_mouth_rois(
        frames,
        interpolate_landmarks(landmarks),
        detector.scheme,
        load_mean_face(config.mean_face),
        config.crop_size,
        config.window,
    )
    return rois, found


def prepare_video(
    path: str | Path,
    detector: str | Detector = "mediapipe-mesh",
    config: RoiConfig | None = None,
    *,
    allow_no_audio: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One video → (mouth ROI (T, 96, 96) gray uint8 at 25 fps, audio (T_a,) float32 at 16 kHz).

    The audio is ``None`` only when the file has no audio track and ``allow_no_audio`` is set.
    ``detector`` is a backend name (built once per process) or an instance. Raises :class:`PrepareError`
    naming the file and the reason (see :data:`REASONS`)."""
    config = config or RoiConfig()
    det = _detector(detector) if isinstance(detector, str) else detector
    try:
        frames, fps = media.read_video(path)
    except media.MediaError as e:
        raise PrepareError(path, "unreadable", str(e).removeprefix(f"{path}: ")) from e
    has_audio = has_audio_track(path)
    if not has_audio and not allow_no_audio:
        raise PrepareError(path, "no_audio", "no audio track")
    frames = media.resample_frames(frames, fps, config.fps)
    rois, found = mouth_rois(frames, det, config, path)
    del frames
    if found < len(rois):
        log.debug("%s: face found in %d of %d frames, the rest interpolated", path, found, len(rois))
    audio = None
    if has_audio:
        try:
            audio = media.read_audio(path, media.SAMPLE_RATE)
        except media.MediaError as e:
            raise PrepareError(path, "unreadable", str(e).removeprefix(f"{path}: ")) from e
    return rois, audio


# -- transcripts ---------------------------------------------------------------------------------------

_DASHES = re.compile(r"[-\u2010-\u2015/]+")
_NOT_WORD = re.compile(r"[^\w\s']|_")


def normalize_text(text: str) -> str:
    """Lowercase; dashes and slashes become spaces; other punctuation (commas included) is removed,
    apostrophes are kept; whitespace collapsed."""
    text = text.lower().replace("\u2019", "'")
    text = _NOT_WORD.sub("", _DASHES.sub(" ", text))
    return " ".join(text.split())


def read_transcript(video: str | Path) -> str | None:
    """The normalised transcript in ``<stem>.txt`` beside ``video``, or ``None`` when there is none.

    LRS3-style files (``Text:  WORDS`` on the first line, then word timings) give the ``Text:`` line;
    any other file is taken whole."""
    txt = Path(video).with_suffix(".txt")
    if not txt.is_file():
        return None
    raw = txt.read_text(encoding="utf-8", errors="replace")
    first = raw.lstrip().split("\n", 1)[0]
    if first.startswith("Text:"):
        raw = first[len("Text:") :]
    return normalize_text(raw)


# -- the corpus job ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One input video and its output path relative to ``<out>/<dataset>/`` (POSIX, ending in ``.mp4``)."""

    src: Path
    rel_path: str


def collect_inputs(inputs: Sequence[str | Path], root: str | Path | None = None) -> list[Job]:
    """Video files from files and directory trees (searched recursively for :data:`VIDEO_EXTENSIONS`,
    hidden files excluded). Output paths keep the layout under each directory input; a file input keeps
    its path under ``root`` when given and below it, else just its name. Raises ``ValueError`` for a
    missing input or two inputs that map to the same output."""
    jobs: list[Job] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p)
                if (
                    f.is_file()
                    and f.suffix.lower() in VIDEO_EXTENSIONS
                    and not any(part.startswith(".") for part in rel.parts)
                ):
                    jobs.append(Job(f, rel.with_suffix(".mp4").as_posix()))
        elif p.is_file():
            base = Path(root) if root is not None else None
            if base is not None and p.resolve().is_relative_to(base.resolve()):
                rel = p.resolve().relative_to(base.resolve())
            else:
                rel = Path(p.name)
            jobs.append(Job(p, rel.with_suffix(".mp4").as_posix()))
        else:
            raise ValueError(f"{p}: input not found")
    seen: dict[str, Path] = {}
    for j in jobs:
        if j.rel_path in seen:
            raise ValueError(f"{seen[j.rel_path]} and {j.src} would both be written as {j.rel_path}")
        seen[j.rel_path] = j.src
    return jobs


@dataclass(frozen=True)
class PrepareOptions:
    """Where and how a corpus is written (see the module docstring for the layout)."""

    out: Path
    dataset: str = "custom"
    roi: RoiConfig = field(default_factory=RoiConfig)
    jobs: int = 1
    allow_no_audio: bool = False
    fail_fast: bool = False
    overwrite: bool = False
    csv: Path | None = None
    report: Path | None = None

    def __post_init__(self) -> None:
        if not self.dataset or any(c in self.dataset for c in ",/\\\n"):
            raise ValueError(
                f"dataset name must be non-empty without commas or slashes, got {self.dataset!r}"
            )
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")

    @property
    def csv_path(self) -> Path:
        return self.csv or self.out / "labels" / f"{self.dataset}.csv"

    @property
    def report_path(self) -> Path:
        return self.report or self.out / "labels" / f"{self.dataset}.prepare.json"


@dataclass
class ItemResult:
    """What happened to one input. status: ``done`` (prepared now), ``exists`` (complete from an earlier
    run, not redone) or ``skipped`` (``reason`` ∈ :data:`REASONS`, ``message`` names the file)."""

    src: str
    rel_path: str
    status: str
    reason: str | None = None
    message: str | None = None
    frames: int = 0
    audio_seconds: float | None = None
    text: str | None = None
    seconds: float = 0.0


def _remove_stale_temps(target: Path) -> None:
    # media writes through ``.<stem>.XXXXXXXX<suffix>`` temp files; a killed run can leave them behind
    pattern = re.compile(rf"^\.{re.escape(target.stem)}\.[A-Za-z0-9_]{{8}}{re.escape(target.suffix)}$")
    if target.parent.is_dir():
        for f in target.parent.iterdir():
            if pattern.match(f.name):
                f.unlink(missing_ok=True)


def _count_frames(mp4: Path) -> int:
    n = media.video_info(mp4)[0]
    return n if n > 0 else len(media.read_video(mp4, gray=True)[0])


def process_item(job: Job, options: PrepareOptions) -> ItemResult:
    """Prepare one video into the corpus (runs in a pool worker). Never raises for a bad input: the
    result says why it was skipped."""
    t0 = time.perf_counter()
    res = ItemResult(str(job.src), job.rel_path, "skipped")
    try:
        if any(c in job.rel_path for c in ",\n\r"):
            raise PrepareError(
                job.src, "bad_name", f"output path {job.rel_path!r} cannot be written to the label CSV"
            )
        mp4 = options.out / options.dataset / job.rel_path
        wav = mp4.with_suffix(".wav")
        res.text = read_transcript(job.src)
        if not options.overwrite and mp4.is_file() and (wav.is_file() or options.allow_no_audio):
            res.status, res.frames = "exists", _count_frames(mp4)
            return res
        rois, audio = prepare_video(
            job.src, options.roi.detector, options.roi, allow_no_audio=options.allow_no_audio
        )
        for target in (mp4, wav):
            _remove_stale_temps(target)
        if audio is not None:
            media.write_wav(wav, audio, media.SAMPLE_RATE)
            res.audio_seconds = round(len(audio) / media.SAMPLE_RATE, 3)
        else:
            wav.unlink(missing_ok=True)  # a stale wav from an earlier run must not pair with this video
        media.write_video(mp4, rois, options.roi.fps)  # last: its existence marks the item complete
        res.status, res.frames = "done", len(rois)
    except PrepareError as e:
        res.reason, res.message = e.reason, str(e)
    except Exception as e:  # a bug or an unforeseen input must not stop a long batch
        log.debug("unexpected error on %s", job.src, exc_info=True)
        res.reason, res.message = "error", f"{job.src}: {type(e).__name__}: {e}"
    finally:
        res.seconds = round(time.perf_counter() - t0, 3)
    return res


@dataclass
class PrepareReport:
    """All item results of a run, the files written and the run time."""

    items: list[ItemResult]
    csv: str
    report: str
    elapsed: float = 0.0

    def counts(self) -> dict[str, int]:
        c = Counter(r.status for r in self.items)
        return {s: c.get(s, 0) for s in ("done", "exists", "skipped")}

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(r.reason for r in self.items if r.status == "skipped"))

    def to_dict(self) -> dict:
        return {
            "csv": self.csv,
            "elapsed_seconds": round(self.elapsed, 3),
            "counts": self.counts(),
            "skipped_by_reason": self.skipped_by_reason(),
            "items": [asdict(r) for r in self.items],
        }


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one video per process already uses the cores; OpenCV's pool would oversubscribe


def _csv_line(dataset: str, r: ItemResult) -> str:
    return f"{dataset},{r.rel_path},{r.frames},{TOKEN_IDS_PLACEHOLDER},{r.text or ''}\n"


def _log_report(report: PrepareReport) -> None:
    c = report.counts()
    rows = [("prepared now", c["done"]), ("already complete", c["exists"]), ("skipped", c["skipped"])]
    rows += [(f"  {reason}", n) for reason, n in sorted(report.skipped_by_reason().items())]
    width = max(len(k) for k, _ in rows)
    table = "\n".join(f"  {k:<{width}}  {v:>6}" for k, v in rows)
    log.info("prepare: %d inputs in %.1f s\n%s", len(report.items), report.elapsed, table)
    for r in report.items:
        if r.status == "skipped":
            log.warning("skipped (%s): %s", r.reason, r.message)
    log.info("labels: %s; report: %s", report.csv, report.report)


def prepare_corpus(
    inputs: Sequence[str | Path] | Sequence[Job],
    options: PrepareOptions,
    *,
    root: str | Path | None = None,
    progress: bool = True,
) -> PrepareReport:
    """Prepare every input video into ``options.out`` (see the module docstring); returns the report,
    also written as JSON, with the label CSV, at the end. With ``options.fail_fast`` the first bad input
    raises its :class:`PrepareError` (outputs finished so far stay; nothing else is written).

    ``options.jobs > 1`` starts worker processes with the ``spawn`` method (MediaPipe's and OpenCV's
    threads do not survive a fork), so a script calling this needs the ``if __name__ == "__main__":``
    guard; the ``llama-avsr prepare`` command has it.

    The label CSV is merged with what an earlier run wrote there (:func:`merge_labels`) and replaced
    atomically; the dataset folder is locked while the run lasts (a second writer is refused)."""
    # one writer per prepared dataset: a second prepare into it is refused while this one runs (the
    # label CSV is read, merged and replaced at the end; two at once would drop each other's items)
    with exclusive_lock(options.out / options.dataset, f"a prepare of dataset {options.dataset!r}"):
        return _prepare_corpus(inputs, options, root, progress)


def merge_labels(csv: Path, redone: set[str], new: list[tuple[str, str]]) -> list[str]:
    """The label lines after a run: the existing file's lines for items this run did not touch, kept
    as they are, plus this run's (``(rel_path, line)``; items it tried and skipped leave the labels),
    sorted by path. Earlier runs' items are never dropped."""
    merged: dict[str, str] = {}
    if csv.is_file():
        for line in csv.read_text(encoding="utf-8").splitlines():
            fields = line.split(",", 4)
            if len(fields) == 5 and fields[1] not in redone:
                merged[fields[1]] = line + "\n"
    merged.update(dict(new))
    return [merged[k] for k in sorted(merged)]


def _prepare_corpus(
    inputs: Sequence[str | Path] | Sequence[Job],
    options: PrepareOptions,
    root: str | Path | None,
    progress: bool,
) -> PrepareReport:
    t0 = time.perf_counter()
    if inputs and all(isinstance(i, Job) for i in inputs):
        jobs: list[Job] = list(inputs)  # type: ignore[arg-type]
    else:
        jobs = collect_inputs(inputs, root)  # type: ignore[arg-type]
    _detector(options.roi.detector)  # fail before the batch when the backend cannot run here
    results: list[ItemResult] = []

    def handle(r: ItemResult, bar: tqdm) -> None:
        results.append(r)
        bar.update(1)
        if r.status == "skipped":
            if options.fail_fast:
                raise PrepareError(r.src, r.reason or "error", (r.message or "").removeprefix(f"{r.src}: "))
            log.debug("skipped (%s): %s", r.reason, r.message)

    with tqdm(total=len(jobs), desc="prepare", unit="video", disable=not progress) as bar:
        if options.jobs == 1 or len(jobs) <= 1:
            for j in jobs:
                handle(process_item(j, options), bar)
        else:
            # spawn, not fork: MediaPipe/TFLite and OpenCV keep threads that a fork would copy half-way
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=options.jobs, mp_context=ctx, initializer=_init_worker
            ) as pool:
                futures = [pool.submit(process_item, j, options) for j in jobs]
                try:
                    for fut in as_completed(futures):
                        handle(fut.result(), bar)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise

    order = {j.rel_path: i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: order[r.rel_path])
    report = PrepareReport(results, str(options.csv_path), str(options.report_path))
    ok = [r for r in results if r.status in ("done", "exists")]
    lines = merge_labels(
        options.csv_path,
        {j.rel_path for j in jobs},
        [(r.rel_path, _csv_line(options.dataset, r)) for r in ok],
    )
    atomic_write_text(options.csv_path, "".join(lines))
    report.elapsed = time.perf_counter() - t0
    atomic_write_text(options.report_path, json.dumps(report.to_dict(), indent=2) + "\n")
    _log_report(report)
    return report
