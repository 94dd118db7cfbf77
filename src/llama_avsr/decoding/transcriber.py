"""The Python API: ``load_model(dir or hub id)`` → :class:`Transcriber`; ``transcribe(inputs)`` → results.

::

    import llama_avsr
    model = llama_avsr.load_model("runs/exp/model")          # device="auto": CUDA > MPS > CPU
    print(model.transcribe("talk.mp4").text)

One input gives one :class:`Result`, a list gives a list. Recordings longer than ``max_segment_seconds``
(``decode.max_segment_seconds`` of the model's config: 16 s by default, LRS3's longest utterances) are cut at pauses found by voice-activity detection
(``decoding/segment.py``), audio and video at the same times; all segments of all inputs are decoded in
length-sorted batches and joined. A segment whose transcript reaches ``max_new_tokens`` is split in two
and decoded again; what still stops there is reported in ``Result.warnings`` and logged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llama_avsr.config import TASKS, task_of
from llama_avsr.data.batch import blank_streams
from llama_avsr.data.collate import Collator
from llama_avsr.data.transforms import build_transforms
from llama_avsr.decoding.media import (
    SAMPLES_PER_FRAME,
    Media,
    NoAudioError,
    NoVideoError,
    as_media,
)
from llama_avsr.decoding.options import DecodingOptions
from llama_avsr.decoding.search import Hypothesis, decode, parse_rates
from llama_avsr.decoding.segment import FRAME, plan_segments, quietest_between
from llama_avsr.decoding.streams import check_streams
from llama_avsr.devices import resolve_device
from llama_avsr.experiment import ExperimentConfig
from llama_avsr.media import SAMPLE_RATE, VIDEO_FPS
from llama_avsr.models.avsr import AVSRModel

log = logging.getLogger(__name__)

#: a segment that hits ``max_new_tokens`` is split in two while both halves stay at least this long
MIN_SPLIT_SECONDS = 1.0


@dataclass
class Segment:
    """A piece of a recording: ``start``/``end`` in seconds from its beginning, and its transcript.
    ``truncated``: the transcript stopped at ``max_new_tokens`` (it may miss words at the end)."""

    start: float
    end: float
    text: str
    truncated: bool = False


@dataclass
class Result:
    """The transcript of one input: ``text`` (segments joined), ``segments``, ``duration`` (seconds),
    ``name`` (the path or ``<array>``) and ``warnings`` (e.g. a truncated segment)."""

    text: str
    segments: list[Segment]
    duration: float
    name: str = "<array>"
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "text": self.text,
            "seconds": round(self.duration, 2),
            "segments": [dataclasses.asdict(s) for s in self.segments],
            **({"warnings": self.warnings} if self.warnings else {}),
        }


def load_model(
    name_or_dir: str,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
) -> Transcriber:
    """Load a model directory (``llama-avsr train`` / ``import-reference`` output) or a hub repo id.

    device: ``auto`` picks CUDA, then MPS, then the CPU. dtype: cast the whole model (e.g.
    ``"bfloat16"``); ``None`` keeps the dtypes it was saved with.
    """
    from llama_avsr.config import torch_dtype
    from llama_avsr.model_dir import load_model_dir

    model, exp = load_model_dir(name_or_dir, device=resolve_device(device), revision=revision)
    if dtype is not None:
        model.to(torch_dtype(dtype) if isinstance(dtype, str) else dtype)
    return Transcriber(model, exp)


@dataclass
class _Piece:
    """One segment of one input, ready to collate."""

    item: int
    start: float
    end: float
    sample: dict[str, Any]
    depth: int = 0
    #: the task this input is decoded as (multi-task models; ``None``: the model's one task)
    task: str | None = None
    #: the modalities this input is decoded with (the others are blanked or unused)
    keep: tuple[str, ...] = ()

    @property
    def length(self) -> int:
        return next(v.shape[0] for k, v in self.sample.items() if k in ("audio", "video"))


class Transcriber:
    """A loaded model and its experiment config, with :meth:`transcribe`.

    model: the :class:`~llama_avsr.models.avsr.AVSRModel` (``.model``); exp: its experiment config.
    """

    def __init__(self, model: AVSRModel, exp: ExperimentConfig) -> None:
        self.model = model.eval()
        self.exp = exp
        self.collate = Collator(model.tokenizer, self.modalities, with_targets=False)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The streams this model reads, e.g. ``("audio", "video")``."""
        return tuple(self.model.cfg.modalities)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def encoder_window(self) -> float | None:
        """The longest audio (s) every audio encoder of the model reads whole (Whisper: 30 s), or None."""
        limits = [
            self.model.encoders[s.encoder].max_seconds
            for s in self.model.cfg.streams.values()
            if "audio" in s.inputs and self.model.encoders[s.encoder].max_seconds
        ]
        return min(limits) if limits else None

    def options(
        self,
        beams: int | None = None,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
        length_penalty: float | None = None,
        max_segment_seconds: float | None = None,
    ) -> DecodingOptions:
        """The model's decoding options (``exp.decode``) with the given ones replaced."""
        changes = {
            "num_beams": beams,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "length_penalty": length_penalty,
            "max_segment_seconds": max_segment_seconds,
        }
        return dataclasses.replace(self.exp.decode, **{k: v for k, v in changes.items() if v is not None})

    def transcribe(
        self,
        inputs: Any,
        *,
        beams: int | None = None,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
        length_penalty: float | None = None,
        streams: Sequence[str] | None = None,
        snr: float | None = None,
        max_segment_seconds: float | None = None,
        vad: str = "auto",
        prepared: bool | None = None,
        detector: str = "mediapipe-mesh",
        progress: bool = False,
        task: str | None = None,
        rates: dict[str, int] | str | None = None,
    ) -> Result | list[Result]:
        """Transcribe one input or a list of inputs.

        inputs: a path (video or audio file), a :class:`~llama_avsr.decoding.media.Media`, a numpy array
            or torch tensor (1-D: 16 kHz audio; (T, 96, 96) uint8: 25 fps mouth video), a dict
            ``{"audio": …, "video": …}``, or a list of these.
        beams, max_new_tokens, batch_size, length_penalty: decoding options (default: the model's).
        streams: the model's streams to use (default: all); the others are blanked as in ``eval``.
        snr: add babble noise to the audio at this SNR in dB (testing robustness).
        max_segment_seconds: longer recordings are cut by voice-activity detection into segments of at
            most this long (default: the model's ``decode.max_segment_seconds``, 16 s unless its config
            says otherwise; at most the audio encoder's window).
        vad: ``auto`` (Silero when installed, else energy), ``silero`` or ``energy``.
        prepared, detector: how video files are read (see :func:`~llama_avsr.decoding.media.load_media`).
        task: for a multi-task model (``tasks``): ``asr``, ``vsr`` or ``avsr``; default: decided per input
            by the streams it has (``streams`` when given), the model's fullest task when it has all.
        rates: for a multi-rate model, the compression rate per stream (``{"audio": 16, "video": 5}`` or
            ``"audio=16,video=5"``): fewer LLM tokens, faster, usually less accurate; default: each
            stream's ``ratio``. A rate the model was not trained at is a ``ValueError``.
        """
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        options = self.options(beams, max_new_tokens, batch_size, length_penalty, max_segment_seconds)
        rates = parse_rates(rates)
        cfg = self.model.cfg
        if cfg.tasks is None:
            if task is not None:
                cfg.check_task(task)
            keep = check_streams(streams, self.modalities)
            needed: tuple[str, ...] | None = self.needed(keep)
        else:
            if task is None and streams is not None:
                task = task_of(check_streams(streams, self.modalities))
            if task is not None:
                cfg.check_task(task)
            needed = TASKS[task] if task is not None else None
        cfg.check_rates(rates)
        max_seg = self._max_segment(options.max_segment_seconds)
        medias = [as_media(x, needed, prepared=prepared, detector=detector) for x in items]
        data = dataclasses.replace(self.exp.data, decode_snr_target=snr)
        transforms = build_transforms("test", self.modalities, data)

        pieces: list[_Piece] = []
        warnings: list[list[str]] = [[] for _ in medias]
        for i, m in enumerate(medias):
            m_task = None
            if cfg.tasks is not None:
                m_task = task if task is not None else self.task_for(m)
                keep = TASKS[m_task]
            audio, video = self._aligned(m, keep)
            # voice-activity detection on the audio the model hears; blanked audio: equal pieces
            heard = audio if "audio" in keep else None
            segments = plan_segments(heard, m.duration, max_seg, vad)
            if not segments:
                warnings[i].append(f"{m.name}: no speech detected in {m.duration:.1f} s")
                log.warning("%s", warnings[i][-1])
            for start, end in segments:
                whole = (start, end) == (0.0, m.duration)
                sample = self._sample(m.name, audio, video, start, end, whole, transforms)
                pieces.append(_Piece(i, start, end, sample, task=m_task, keep=tuple(keep)))
        done = self._decode(pieces, medias, options, transforms, warnings, progress, rates)

        results = []
        for i, m in enumerate(medias):
            segs = [
                Segment(round(p.start, 3), round(p.end, 3), h.text, not h.finished)
                for p, h in sorted(((p, h) for p, h in done if p.item == i), key=lambda ph: ph[0].start)
            ]
            text = " ".join(s.text for s in segs if s.text)
            results.append(Result(text, segs, m.duration, m.name, warnings[i]))
        return results[0] if single else results

    def task_for(self, m: Media) -> str:
        """The task of a multi-task model for an input: the one that reads what the input has."""
        have = [
            k for k, v in (("audio", m.audio), ("video", m.video)) if v is not None and k in self.modalities
        ]
        tasks = self.model.cfg.task_names
        if set(have) == set(self.modalities):
            return self.model.cfg.default_task
        t = task_of(have) if have else None
        if t not in tasks:
            err = NoAudioError if "audio" not in have else NoVideoError
            raise err(f"{m.name}: the input has {have or 'no usable stream'}; this model's tasks are {tasks}")
        return t

    def needed(self, keep: Sequence[str]) -> tuple[str, ...]:
        """The modalities an input must have when only ``keep`` are used (the others are blanked)."""
        return tuple(m for m in self.modalities if m in keep)

    def _max_segment(self, max_seg: float) -> float:
        window = self.encoder_window
        if window is not None and max_seg > window:
            log.warning(
                "segments of %.1f s are longer than the audio encoder's %.1f s window: using %.1f s",
                max_seg,
                window,
                window,
            )
            max_seg = window
        return max_seg

    def _aligned(self, m: Media, keep: Sequence[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The input's audio and video as the model reads them: a used stream must be there; a blanked
        one that is missing is made of zeros; with both, the audio is cut or padded to the video
        (640 samples per frame), as the corpus reader does."""
        mods = self.modalities
        for need, have, err in (("audio", m.audio, NoAudioError), ("video", m.video, NoVideoError)):
            if need in mods and need in keep and have is None:
                raise err(f"{m.name}: this model reads {need}, and the input has none")
        audio = m.audio if "audio" in mods else None
        video = m.video if "video" in mods else None
        if "video" in mods and video is None:
            frames = max(1, round(len(audio) / SAMPLES_PER_FRAME))
            video = np.zeros((frames, 96, 96), np.uint8)
        if "audio" in mods and audio is None:
            audio = np.zeros(len(video) * SAMPLES_PER_FRAME, np.float32)
        if audio is not None and video is not None:
            n = len(video) * SAMPLES_PER_FRAME
            audio = audio[:n] if len(audio) >= n else np.pad(audio, (0, n - len(audio)))
        return audio, video

    def _sample(self, name, audio, video, start, end, whole, transforms) -> dict[str, Any]:
        raw: dict[str, torch.Tensor] = {}
        if audio is not None:
            a = audio if whole else audio[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
            raw["audio"] = torch.from_numpy(np.ascontiguousarray(a))
        if video is not None:
            v = video if whole else video[round(start * VIDEO_FPS) : round(end * VIDEO_FPS)]
            raw["video"] = torch.from_numpy(np.ascontiguousarray(v))
        gen = torch.Generator().manual_seed(0)
        sample: dict[str, Any] = {"id": f"{name}@{start:.2f}", "text": ""}
        sample.update({k: transforms[k](x, gen).float() for k, x in raw.items()})
        return sample

    def _decode(
        self, pieces, medias, options, transforms, warnings, progress, rates=None
    ) -> list[tuple[_Piece, Hypothesis]]:
        """Decode pieces in length-sorted batches of one task each; split and redo those that reach
        ``max_new_tokens``."""
        from tqdm import tqdm

        order = lambda p: (p.task or "", p.length)  # noqa: E731
        done: list[tuple[_Piece, Hypothesis]] = []
        todo = sorted(pieces, key=order)
        bar = tqdm(total=len(todo), unit="seg", desc="transcribing", disable=not progress)
        while todo:
            first = todo[0]
            same = [p for p in todo if p.task == first.task and p.keep == first.keep][: options.batch_size]
            chosen = {id(p) for p in same}
            batch_pieces, todo = same, [p for p in todo if id(p) not in chosen]
            keep = first.keep
            batch = blank_streams(self.collate([p.sample for p in batch_pieces]), keep).to(self.device)
            again: list[_Piece] = []
            hyps = decode(self.model, batch, options, first.task, rates)
            for p, h in zip(batch_pieces, hyps, strict=True):
                m = medias[p.item]
                long_form = (p.start, p.end) != (0.0, m.duration) or p.depth
                if not h.finished and long_form and p.end - p.start >= 2 * MIN_SPLIT_SECONDS:
                    again += self._split(p, m, keep, transforms)
                    bar.total += 1
                    continue
                if not h.finished:
                    msg = (
                        f"{m.name} {p.start:.2f}–{p.end:.2f} s: transcript reached max_new_tokens="
                        f"{options.max_new_tokens} and may be cut short (raise max_new_tokens)"
                    )
                    log.warning("%s", msg)
                    warnings[p.item].append(msg)
                done.append((p, h))
            bar.update(len(batch_pieces))
            if again:
                todo = sorted(todo + again, key=order)
        bar.close()
        return done

    def _split(self, p: _Piece, m: Media, keep: Sequence[str], transforms) -> list[_Piece]:
        """Two halves of a piece, cut at its quietest frame around the middle."""
        audio, video = self._aligned(m, keep)
        half = (p.end - p.start) / 2
        if "audio" in keep:  # the quietest frame between a quarter and three quarters of the piece
            cut = quietest_between(audio, p.start + half / 2, p.end - half / 2)
        else:
            cut = p.start + half
        cut = min(max(cut, p.start + MIN_SPLIT_SECONDS), p.end - MIN_SPLIT_SECONDS)
        cut = round(round(cut / FRAME) * FRAME, 3)
        return [
            _Piece(
                p.item,
                s,
                e,
                self._sample(m.name, audio, video, s, e, False, transforms),
                p.depth + 1,
                p.task,
                p.keep,
            )
            for s, e in ((p.start, cut), (cut, p.end))
        ]
