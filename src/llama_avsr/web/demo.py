"""What the web demo does, without a web framework: load a clip, show what the model sees, transcribe it
under each stream condition, mix noise into its audio, sweep WER against SNR.

Everything goes through the public inference API (``llama_avsr.load_model`` →
``model.transcribe``; ``llama_avsr.decoding.load_media``): the page is one more user of it, not a
second inference path.  Bad input becomes a :class:`ClipError` whose one-line message the page shows.

Shapes: audio (T_a,) float32 at 16 kHz; mouth video (T, 96, 96) uint8 gray at 25 fps.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llama_avsr import media

log = logging.getLogger(__name__)

SAMPLE_RATE = media.SAMPLE_RATE
VIDEO_FPS = media.VIDEO_FPS
#: the condition that uses every stream the model reads
FULL = "all streams"
#: what each stream condition is called on the page, by the streams it keeps (the others are blanked)
CONDITION_NAMES: dict[tuple[str, ...], str] = {
    ("audio", "video"): "audio-visual",
    ("audio",): "audio only (video blanked)",
    ("video",): "video only (audio blanked)",
}
#: SNRs of the WER-vs-SNR sweep (None = clean), in dB of babble or the chosen noise
SWEEP_SNRS: tuple[float | None, ...] = (-5.0, 0.0, 5.0, 10.0, 20.0, None)
#: mouth frames shown in the preview (rows × columns)
STRIP_GRID = (2, 4)
#: noise choices on the page
NOISE_CLEAN, NOISE_BABBLE, NOISE_FILE = "clean", "babble", "my noise file"
#: suffixes of audio-only files (no frame-rate check)
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus"})


class NeedsInput(ValueError):
    """The page lacks something the user has to give (a reference, a noise file); one line."""


class ClipError(ValueError):
    """A clip or noise file the page cannot use; the message is one line meant for the user."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    #: largest upload accepted, in MB (the browser refuses larger files before sending them)
    max_upload_mb: float = 200.0
    #: longest clip accepted, in seconds (longer than one window is decoded by the long-form path)
    max_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0 or self.max_seconds <= 0:
            raise ValueError("upload and duration limits must be positive")


@dataclasses.dataclass
class Clip:
    """One loaded clip: clean audio and mouth crops, as the model's preparation made them."""

    name: str
    audio: np.ndarray | None  # (T_a,) float32 16 kHz, or None (no audio track)
    video: np.ndarray | None  # (T, 96, 96) uint8 gray 25 fps, or None (audio file)

    @property
    def seconds(self) -> float:
        if self.audio is not None:
            return len(self.audio) / SAMPLE_RATE
        return 0.0 if self.video is None else len(self.video) / VIDEO_FPS


@dataclasses.dataclass
class Transcript:
    """One condition's transcript. segments: (start s, end s, text) — several for a long clip."""

    condition: str
    streams: tuple[str, ...]
    text: str
    seconds: float  # decoding time
    segments: list[tuple[float, float, str]]
    wer: float | None = None  # against the reference, when one is given
    warnings: list[str] = dataclasses.field(default_factory=list)  # e.g. a segment cut at max_new_tokens


def probe_seconds(path: str | Path) -> float:
    """Duration of a media file from its container, without decoding; raises :class:`ClipError`."""
    import av

    path = Path(path)
    try:
        with media._open(path) as c:
            if c.duration is not None:
                return c.duration / 1_000_000
            durations = [
                float(s.duration * s.time_base) for s in c.streams if s.duration and s.time_base is not None
            ]
            return max(durations, default=0.0)
    except media.MediaError as e:
        raise ClipError(_one_line(e).replace(str(path), path.name)) from e
    except av.error.FFmpegError as e:
        raise ClipError(f"{path.name}: unreadable ({e})") from e


def frame_times(path: str | Path) -> np.ndarray | None:
    """Presentation times (s, sorted) of the video frames, read from the packets without decoding;
    None when the file has no video track."""
    import av

    with media._open(path) as c:
        if not c.streams.video:
            return None
        stream = c.streams.video[0]
        try:
            pts = [p.pts for p in c.demux(stream) if p.pts is not None and p.size > 0]
        except av.error.FFmpegError as e:
            raise ClipError(f"{Path(path).name}: corrupt video stream ({e})") from e
        base = float(stream.time_base)
    if not pts:
        return None
    t = np.sort(np.asarray(pts, dtype=np.float64) * base)
    return t - t[0]


def is_variable_rate(times: np.ndarray, fps: float) -> bool:
    """Whether frames placed at ``i / fps`` would drift more than half a frame from their timestamps
    (browsers' webcam recordings: MediaRecorder writes frames whenever they come)."""
    if len(times) < 2 or fps <= 0:
        return False
    return bool(np.abs(times - np.arange(len(times)) / fps).max() > 0.5 / fps)


def constant_rate(path: str | Path, out: str | Path, fps: float = VIDEO_FPS) -> Path | None:
    """A variable-frame-rate recording → an mp4 at a constant ``fps`` with each frame shown from its own
    timestamp on (and the original audio), so that lips and sound stay aligned; None when the file
    already is constant-rate (it is then read as it is)."""
    import av

    times = frame_times(path)
    if times is None:
        return None
    with media._open(path) as c:
        stream = c.streams.video[0]
        declared = float(stream.average_rate or stream.guessed_rate or 0)
    if declared > 0 and not is_variable_rate(times, declared):
        return None
    frames: list[np.ndarray] = []
    stamps: list[float] = []
    with media._open(path) as c:
        stream = c.streams.video[0]
        try:
            for f in c.decode(stream):
                if f.pts is None:
                    continue
                frames.append(f.to_ndarray(format="rgb24"))
                stamps.append(float(f.pts * f.time_base))
        except av.error.FFmpegError as e:
            raise ClipError(f"{Path(path).name}: corrupt video stream ({e})") from e
    if not frames:
        return None
    order = np.argsort(stamps)
    t = np.asarray(stamps)[order] - min(stamps)
    ticks = np.arange(int(np.floor(t[-1] * fps)) + 1) / fps
    # the frame on screen at each tick: the last one that started at or before it
    idx = order[np.clip(np.searchsorted(t, ticks + 1e-6, side="right") - 1, 0, len(t) - 1)]
    try:
        audio = media.read_audio(path)
    except media.MediaError:
        audio = None  # no sound track: the model's own checks say what that means
    media.write_video(out, np.stack([frames[i] for i in idx]), fps, audio=audio)
    log.info("%s: variable frame rate (%d frames in %.2f s) → %g fps", Path(path).name, len(t), t[-1], fps)
    return Path(out)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _word_error_rate(reference: str, hypothesis: str) -> float:
    from llama_avsr.evaluation.metrics import word_errors

    return word_errors(reference, hypothesis).rate


class Demo:
    """The page's state that outlives a request: the model, decoding settings, limits, noise tracks.

    model: what ``llama_avsr.load_model`` returns (``transcribe``, ``modalities``).
    load_media: ``llama_avsr.decoding.load_media`` (``(path, modalities) -> Media``).
    beams: beam size (None: the model's own decoding configuration).
    examples: clips offered on the page (the demo corpus's full-face videos), with their transcripts.
    sweep_snrs: the SNRs (dB; None = clean) of the WER-vs-SNR sweep.
    """

    def __init__(
        self,
        model: Any,
        *,
        load_media: Callable[..., Any] | None = None,
        beams: int | None = None,
        limits: Limits | None = None,
        examples: Sequence[tuple[Path, str]] = (),
        sweep_snrs: Sequence[float | None] = SWEEP_SNRS,
    ) -> None:
        if load_media is None:
            from llama_avsr.decoding import load_media
        self.model = model
        self.load_media = load_media
        self.beams = beams
        self.limits = limits or Limits()
        self.examples = list(examples)
        self.sweep_snrs = tuple(sweep_snrs)
        self._noise: dict[str, np.ndarray] = {}

    # -- clips -----------------------------------------------------------------------------------------

    def load(self, path: str | Path | None, workdir: str | Path | None = None) -> Clip:
        """Check the limits, then decode and prepare the clip (face detection, mouth crop, 16 kHz audio).

        workdir: where a variable-frame-rate recording (a webcam clip from the browser) is rewritten at
        a constant 25 fps first (default: a temporary folder, removed afterwards)."""
        if not path:
            raise NeedsInput("no clip: upload a video, record one, or pick an example")
        path = Path(path)
        self._check_size(path)
        mods = tuple(self.model.modalities)
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            source = path
            if "video" in mods and path.suffix.lower() not in AUDIO_SUFFIXES:
                source = constant_rate(path, Path(tmp) / f"{path.stem}.mp4") or path
            if source.is_file() and source != path:
                self._check_size(source)  # its duration, now that the container knows it
            try:
                # a one-stream model asks only for its stream (no face detection for ASR); an AV model
                # takes what the file has, so that an audio file or a silent video still gives a condition
                m = self.load_media(source, mods if len(mods) == 1 else None)
            except (ValueError, OSError) as e:  # the API's media errors are one-line ValueErrors
                raise ClipError(_one_line(e).replace(str(source), path.name)) from e
        audio, video = _streams(m)
        clip = Clip(path.name, audio, video)
        needed = set(mods)
        present = {k for k, v in (("audio", audio), ("video", video)) if v is not None}
        if not needed & present:
            raise ClipError(f"{path.name}: has no {' or '.join(sorted(needed))}, which this model reads")
        if clip.seconds > self.limits.max_seconds:
            raise ClipError(
                f"{path.name}: {clip.seconds:.0f} s is longer than the {self.limits.max_seconds:g} s this server accepts"
            )
        log.info("loaded %s: %.1f s, streams %s", path.name, clip.seconds, sorted(present))
        return clip

    # -- noise -----------------------------------------------------------------------------------------

    def noise_track(self, kind: str, noise_file: str | Path | None = None) -> np.ndarray:
        """The whole noise track (T_n,) float32 16 kHz: the project's babble or the user's file."""
        from llama_avsr.data.noise import NoiseError, NoiseSource

        if kind == NOISE_BABBLE:
            key, source = NOISE_BABBLE, NoiseSource(None)
        elif kind == NOISE_FILE:
            if not noise_file:
                raise NeedsInput("choose a noise file (any audio or video file with sound)")
            key, source = str(noise_file), NoiseSource(noise_file)
        else:
            raise NeedsInput(f"unknown noise {kind!r}")
        if key not in self._noise:
            if kind == NOISE_FILE:
                self._check_size(Path(key), "noise file")
            try:
                track = source.load().numpy()
            except NoiseError as e:
                raise ClipError(_one_line(e).replace(str(Path(key).parent) + "/", "")) from e
            # babble stays; of the users' files only the latest is kept
            self._noise = {k: v for k, v in self._noise.items() if k == NOISE_BABBLE}
            self._noise[key] = track
        return self._noise[key]

    def _check_size(self, path: Path, what: str = "") -> None:
        """Refuse a file over the upload or duration limit before decoding it."""
        if not path.is_file():
            raise ClipError(f"{path.name}: file not found")
        size_mb = path.stat().st_size / 1e6
        if size_mb > self.limits.max_upload_mb:
            raise ClipError(
                f"{path.name}: {size_mb:.0f} MB is over the {self.limits.max_upload_mb:g} MB limit"
            )
        seconds = probe_seconds(path)
        if seconds > self.limits.max_seconds:
            raise ClipError(
                f"{path.name}: {seconds:.0f} s is longer than the {self.limits.max_seconds:g} s this server "
                f"accepts{f' for a {what}' if what else ''}"
            )

    def mix(
        self, clip: Clip, snr: float | None, kind: str = NOISE_BABBLE, noise_file: str | Path | None = None
    ) -> np.ndarray | None:
        """The clip's audio with noise at ``snr`` dB (the training and evaluation mixing: the same
        segment of the noise track for every condition and SNR, so only the level changes)."""
        if clip.audio is None or snr is None or kind == NOISE_CLEAN or math.isinf(snr):
            return clip.audio
        import torch

        from llama_avsr.data.noise import mix_at_snr, noise_segment

        noise = torch.from_numpy(self.noise_track(kind, noise_file))
        seg = noise_segment(noise, len(clip.audio), torch.Generator().manual_seed(0))
        return mix_at_snr(torch.from_numpy(clip.audio), seg, float(snr)).numpy()

    # -- transcription ---------------------------------------------------------------------------------

    def conditions(self, clip: Clip) -> list[tuple[str, tuple[str, ...]]]:
        """(name, streams) to decode: all the model's streams, then each alone when it reads several.
        A stream the clip lacks is blanked in every condition (an audio file given to an AV model)."""
        mods = tuple(self.model.modalities)
        present = tuple(m for m in mods if getattr(clip, m) is not None)
        out = []
        if present == mods:
            out.append((CONDITION_NAMES.get(mods, FULL), mods))
        if len(mods) > 1:
            out += [(CONDITION_NAMES.get((m,), f"{m} only"), (m,)) for m in mods if m in present]
        return out

    def transcribe(
        self,
        clip: Clip,
        audio: np.ndarray | None = None,
        reference: str = "",
        only: Sequence[str] | None = None,
    ) -> list[Transcript]:
        """Decode the clip under each condition (``only``: those names). ``audio``: a noisy version of
        the clip's audio to use instead of the clean one."""
        # a stream the clip lacks is left out: the API blanks it (zeros of the right length)
        given = {"audio": clip.audio if audio is None else audio, "video": clip.video}
        inputs: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        inputs["name"] = clip.name
        rows = []
        for name, streams in self.conditions(clip):
            if only is not None and name not in only:
                continue
            start = time.perf_counter()
            try:
                r = self.model.transcribe(inputs, beams=self.beams, streams=streams)
            except (ValueError, OSError) as e:
                raise ClipError(f"{clip.name}: {_one_line(e)}") from e
            elapsed = time.perf_counter() - start
            segments = [(s.start, s.end, s.text) for s in r.segments]
            row = Transcript(name, streams, r.text, elapsed, segments, warnings=list(r.warnings))
            if reference.strip():
                row.wer = _word_error_rate(reference, r.text)
            rows.append(row)
            log.info("%s [%s] %.2f s: %s", clip.name, name, elapsed, r.text)
        return rows

    def sweep(
        self,
        clip: Clip,
        reference: str,
        kind: str = NOISE_BABBLE,
        noise_file: str | Path | None = None,
        snrs: Sequence[float | None] | None = None,
        progress: Callable[[float, str], None] | None = None,
    ) -> dict[str, dict[str, dict[str, float]]]:
        """WER of the clip against ``reference`` at each SNR, for the conditions that hear the audio
        (audio-visual and audio only). Returns {condition: {snr label: {"wer": rate}}} as the
        evaluation's plot takes it."""
        from llama_avsr.evaluation.run import snr_label

        if not reference.strip():
            raise NeedsInput("type the reference transcript first: WER needs it")
        if clip.audio is None:
            raise NeedsInput(f"{clip.name} has no audio: noise cannot change anything")
        if kind == NOISE_CLEAN:
            kind = NOISE_BABBLE
        names = [n for n, s in self.conditions(clip) if "audio" in s]
        out: dict[str, dict[str, dict[str, float]]] = {n: {} for n in names}
        snrs = self.sweep_snrs if snrs is None else tuple(snrs)
        for i, snr in enumerate(snrs):
            if progress is not None:
                progress(i / len(snrs), f"SNR {snr_label(snr)} dB")
            rows = self.transcribe(clip, self.mix(clip, snr, kind, noise_file), reference, only=names)
            for row in rows:
                out[row.condition][snr_label(snr)] = {"wer": float(row.wer or 0.0)}
        return out


def _streams(m: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(audio, video) of a :class:`~llama_avsr.decoding.Media`."""
    audio, video = m.audio, m.video
    audio = None if audio is None else np.asarray(audio, dtype=np.float32)
    video = None if video is None else np.asarray(video, dtype=np.uint8)
    return audio, video


# -- what the page shows ---------------------------------------------------------------------------------


def mouth_strip(video: np.ndarray | None, grid: tuple[int, int] = STRIP_GRID) -> np.ndarray | None:
    """rows·cols mouth crops evenly spaced over the clip, in reading order (a clip shorter than that
    repeats frames). (T, H, W) → (rows·H, cols·W) uint8."""
    if video is None or len(video) == 0:
        return None
    rows, cols = grid
    idx = np.linspace(0, len(video) - 1, rows * cols).round().astype(int)
    tiles = video[idx]
    return np.concatenate(
        [np.concatenate(list(tiles[r * cols : (r + 1) * cols]), axis=1) for r in range(rows)]
    )


def write_mouth_clip(clip: Clip, path: str | Path, audio: np.ndarray | None = None) -> Path | None:
    """The mouth crops as an H.264 mp4 (with the clean or noisy audio): what the video encoder sees."""
    if clip.video is None:
        return None
    sound = clip.audio if audio is None else audio
    if sound is not None:
        sound = np.clip(sound, -1.0, 1.0)
    media.write_video(path, clip.video, VIDEO_FPS, audio=sound, sample_rate=SAMPLE_RATE)
    return Path(path)


def waveform_figure(clean: np.ndarray | None, noisy: np.ndarray | None = None, title: str = ""):
    """A matplotlib figure of the waveform (the noisy mixture drawn behind the clean speech)."""
    from matplotlib.figure import Figure  # not pyplot: nothing keeps the page's figures alive

    fig = Figure(figsize=(8, 2.0))
    ax = fig.subplots()
    if clean is None:
        ax.text(0.5, 0.5, "no audio", ha="center", va="center", transform=ax.transAxes)
    else:
        t = np.arange(len(clean)) / SAMPLE_RATE
        step = max(1, len(clean) // 8000)  # a few thousand points are enough for a 800-pixel plot
        if noisy is not None and noisy is not clean:
            ax.plot(t[::step], noisy[::step], color="tab:red", lw=0.6, alpha=0.6, label="with noise")
        ax.plot(t[::step], clean[::step], color="tab:blue", lw=0.6, label="speech")
        ax.set_xlim(0, t[-1] if len(t) else 1)
        ax.legend(loc="upper right", fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def wer_plot(by_condition: dict[str, dict[str, dict[str, float]]], path: str | Path) -> Path:
    """WER against SNR for the clip, one line per condition (the evaluation's own plot)."""
    from llama_avsr.evaluation.run import plot_wer_vs_snr

    plot_wer_vs_snr(by_condition, path)
    return Path(path)


def transcript_table(rows: Sequence[Transcript]) -> list[list[Any]]:
    """Rows of the side-by-side table: condition, transcript, WER %, decoding seconds."""
    return [
        [r.condition, r.text, "" if r.wer is None else round(100 * r.wer, 1), round(r.seconds, 2)]
        for r in rows
    ]


def main_transcript(rows: Sequence[Transcript]) -> str:
    """The first condition's transcript; a long clip's segments one per line with their times."""
    if not rows:
        return ""
    r = rows[0]
    if len(r.segments) > 1:
        return "\n".join(f"[{s:6.1f} – {e:6.1f} s] {t}" for s, e, t in r.segments)
    return r.text
