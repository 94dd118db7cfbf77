"""Generate the synthetic audio-visual corpus in the layout of LRS3 prepared by auto_avsr.

Output under ``out``::

    <dataset>/<split>/<speaker>/<NNNNN>.mp4   mouth ROI, 96×96 gray, 25 fps, H.264
    <dataset>/<split>/<speaker>/<NNNNN>.wav   16 kHz mono, exactly frames/25 s long
    labels/<dataset>_{train,val,test}.csv      dataset_name,rel_path,input_length,X,text
    raw/test/<speaker>/<NNNNN>.mp4 + .txt      a few full-face videos (30 fps, with audio) of test
                                              utterances and their LRS3-style transcripts
    synth.json                                 manifest: seed, counts, speakers per split (training
                                              voices, and the held-out voices of validation and of
                                              test, which differ), babble talkers, vocabulary…

Every utterance is a pure function of (seed, split, index): the same seed gives the same sentences,
the same audio bytes and the same rendered frames whatever ``jobs`` is.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import multiprocessing as mp
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from llama_avsr.io import atomic_write_text
from llama_avsr.media import SAMPLE_RATE, VIDEO_FPS, write_video, write_wav
from llama_avsr.synth import babble, grammar, lips, tts

log = logging.getLogger(__name__)

MANIFEST = "synth.json"
FACE_FPS = 30.0
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. ``jobs`` worker processes (1 = in this process)."""

    out: Path
    n_train: int = 1000
    n_val: int = 100
    n_test: int = 100
    n_faces: int = 2
    seed: int = 0
    jobs: int = 2
    dataset: str = "synth"

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if min(self.n_train, self.n_val, self.n_test, self.n_faces) < 0:
            raise ValueError("utterance counts must be >= 0")
        if self.n_faces > self.n_test:
            raise ValueError(
                f"--faces ({self.n_faces}) cannot exceed --test ({self.n_test}): faces speak test sentences"
            )
        if self.jobs < 1:
            raise ValueError("jobs must be >= 1")
        if not self.dataset or "/" in self.dataset or "," in self.dataset:
            raise ValueError(f"bad dataset name {self.dataset!r}")


@dataclass(frozen=True)
class Item:
    """One utterance to make: ``face`` items are the raw full-face videos."""

    split: str
    index: int  # position in the split
    speaker: tts.Speaker
    speaker_index: int  # position in tts.SPEAKERS (selects the appearance)
    number: int  # file number within (split, speaker)
    sentence: grammar.Sentence
    seed: int
    face: bool = False

    @property
    def rel_path(self) -> str:
        """Path of the video relative to the dataset folder, e.g. ``train/spk03/00012.mp4``."""
        return f"{self.split}/{self.speaker.id}/{self.number:05d}.mp4"


@dataclass(frozen=True)
class Row:
    """A label-CSV line and what the manifest records about the utterance."""

    split: str
    rel_path: str
    n_frames: int
    text: str
    seconds: float


def plan(cfg: SynthConfig) -> list[Item]:
    """All utterances in output order (train, val, test, then the face videos)."""
    sentences = grammar.make_splits(cfg.n_train, cfg.n_val, cfg.n_test, cfg.seed)
    counts = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    items: list[Item] = []
    for split in grammar.SPLITS:
        rng = np.random.default_rng([cfg.seed, 23, _SPLIT_IDS[split]])
        speakers = tts.speakers_for(split)
        # held-out speakers first in the rotation, so even a tiny evaluation split has one
        order = [s for s in speakers if s.held_out] + [
            speakers[i] for i in rng.permutation(len(speakers)) if not speakers[i].held_out
        ]
        numbers: dict[str, int] = {}
        for i in range(counts[split]):
            spk = order[i % len(order)]
            numbers[spk.id] = numbers.get(spk.id, 0) + 1
            seed = int(np.random.SeedSequence([cfg.seed, _SPLIT_IDS[split], i]).generate_state(1)[0])
            items.append(
                Item(split, i, spk, tts.SPEAKERS.index(spk), numbers[spk.id], sentences[split][i], seed)
            )
    test = [it for it in items if it.split == "test"]
    items += [replace(it, face=True) for it in test[: cfg.n_faces]]
    return items


def appearance(speaker_index: int, seed: int) -> lips.Appearance:
    """The mouth appearance of a speaker in a corpus made with ``seed``."""
    return lips.Appearance.sample(np.random.default_rng([seed, 1000 + speaker_index]))


def _speech(item: Item, rng: np.random.Generator) -> tts.Speech:
    """The utterance's audio: the speaker's voice with a little per-utterance variation in speed and
    pitch, 0.12–0.4 s of silence before and after (rounded up to whole 25 fps frames, so that the wav
    lasts exactly frames/25 s), at a random level."""
    v = item.speaker.voice
    voice = replace(
        v,
        rate=int(round(v.rate * rng.uniform(0.94, 1.06))),
        pitch=int(np.clip(v.pitch + rng.integers(-4, 5), 0, 100)),
    )
    speech = tts.synthesize(item.sentence.spoken, voice, seed=item.seed)
    lead, tail = rng.uniform(0.12, 0.4), rng.uniform(0.12, 0.4)
    n_frames = math.ceil((lead + speech.duration + tail) * VIDEO_FPS)
    speech = speech.padded(lead, n_frames / VIDEO_FPS)
    speech.audio = speech.audio[: n_frames * SAMPLE_RATE // VIDEO_FPS]
    peak = float(np.abs(speech.audio).max()) or 1.0
    speech.audio *= rng.uniform(0.3, 0.9) / peak
    return speech


def lrs3_transcript(text: str, words: Iterable[tuple[int, float]], speech_end: float) -> str:
    """A transcript in the format of LRS3's raw ``.txt`` files (``Text:``, ``Conf:``, word timings)."""
    tokens = text.upper().split()
    starts = dict(words)
    lines = [f"Text:  {text.upper()}", "Conf:  4", "", "WORD START END ASDSCORE"]
    times = [starts.get(i) for i in range(len(tokens))]
    for i, tok in enumerate(tokens):
        start = times[i] if times[i] is not None else 0.0
        nxt = next((t for t in times[i + 1 :] if t is not None), speech_end)
        lines.append(f"{tok} {start:.2f} {max(nxt, start):.2f} 5.0")
    return "\n".join(lines) + "\n"


def make_item(item: Item, out: Path, dataset: str, seed: int) -> Row:
    """Synthesise, animate and write one utterance; returns its label row."""
    rng = np.random.default_rng(item.seed)
    speech = _speech(item, rng)
    if item.face:
        n = int(round(speech.duration * FACE_FPS))
        frames = lips.render_face(lips.viseme_track(speech.phonemes, n, FACE_FPS), rng)
        path = out / "raw" / item.rel_path
        write_video(path, frames, fps=FACE_FPS, audio=speech.audio, sample_rate=speech.sample_rate)
        speech_end = max((e for p, _, e in speech.phonemes if not p.startswith("_")), default=speech.duration)
        atomic_write_text(
            path.with_suffix(".txt"), lrs3_transcript(item.sentence.text, speech.words, speech_end)
        )
        return Row("raw", f"raw/{item.rel_path}", n, item.sentence.text, speech.duration)
    n = len(speech.audio) * VIDEO_FPS // SAMPLE_RATE
    track = lips.viseme_track(speech.phonemes, n, VIDEO_FPS)
    frames = lips.render_roi(track, appearance(item.speaker_index, seed), rng)
    path = out / dataset / item.rel_path
    write_video(path, frames, fps=VIDEO_FPS)
    write_wav(path.with_suffix(".wav"), speech.audio, speech.sample_rate)
    return Row(item.split, item.rel_path, n, item.sentence.text, speech.duration)


_WORKER: dict = {}


def _init_worker(out: Path, dataset: str, seed: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already
    _WORKER.update(out=out, dataset=dataset, seed=seed)


def _work(item: Item) -> Row:
    return make_item(item, _WORKER["out"], _WORKER["dataset"], _WORKER["seed"])


def _run(items: list[Item], cfg: SynthConfig) -> Iterator[Row]:
    if cfg.jobs == 1 or len(items) <= 1:
        _init_worker(cfg.out, cfg.dataset, cfg.seed)
        yield from map(_work, items)
        return
    # forkserver: workers start from a clean process (no threads or libraries inherited from the caller)
    ctx = mp.get_context("forkserver" if sys.platform.startswith("linux") else "spawn")
    chunk = max(1, min(16, len(items) // (cfg.jobs * 8)))
    with ctx.Pool(
        cfg.jobs, initializer=_init_worker, initargs=(cfg.out, cfg.dataset, cfg.seed), maxtasksperchild=500
    ) as pool:
        yield from pool.imap(_work, items, chunksize=chunk)


def _csv_text(dataset: str, rows: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow([dataset, r.rel_path, r.n_frames, " ".join(map(str, grammar.word_ids(r.text))), r.text])
    return buf.getvalue()


def generate(cfg: SynthConfig) -> dict:
    """Make the corpus described by ``cfg`` (see the module docstring); returns the manifest."""
    if not tts.available():
        raise tts.EspeakError("libespeak-ng is not available: install espeak-ng (apt-get install espeak-ng)")
    items = plan(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    log.info(
        "synthesising %d utterances (+%d face videos) into %s with %d process(es)",
        len(items) - cfg.n_faces,
        cfg.n_faces,
        cfg.out,
        cfg.jobs,
    )
    t0 = time.perf_counter()
    rows: list[Row] = []
    with tqdm(total=len(items), desc="synth", unit="utt", disable=None) as bar:
        for row in _run(items, cfg):
            rows.append(row)
            bar.update()
    elapsed = time.perf_counter() - t0
    labels = cfg.out / "labels"
    for split in grammar.SPLITS:
        atomic_write_text(
            labels / f"{cfg.dataset}_{split}.csv",
            _csv_text(cfg.dataset, [r for r in rows if r.split == split]),
        )
    faces = [r for r in rows if r.split == "raw"]
    manifest = {
        "generator": "llama_avsr.synth",
        "version": 1,
        "seed": cfg.seed,
        "dataset": cfg.dataset,
        "counts": {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test, "faces": cfg.n_faces},
        "seconds": {s: round(sum(r.seconds for r in rows if r.split == s), 2) for s in grammar.SPLITS},
        "sample_rate": SAMPLE_RATE,
        "fps": VIDEO_FPS,
        "roi_size": lips.ROI_SIZE,
        "labels": {s: f"labels/{cfg.dataset}_{s}.csv" for s in grammar.SPLITS},
        "speakers": {s: [sp.as_dict() for sp in tts.speakers_for(s)] for s in grammar.SPLITS},
        # a speaker heard in training is "seen"; each evaluation split also has voices of its own
        "held_out_speakers": {
            s: [sp.id for sp in tts.SPEAKERS if sp.held_out == s] for s in grammar.SPLITS if s != "train"
        },
        "unseen_speakers": [sp.id for sp in tts.SPEAKERS if sp.test_only],
        # the default noise (data.noise_file / data.eval_noise_file unset): two babble tracks whose
        # talkers are disjoint, training augmentation and validation/test noise
        "babble_talkers": {
            track: [v.name for v in babble.babble_voices(babble.BABBLE_VOICES, track)]
            for track in babble.TRACKS
        },
        "held_out_pairs": [list(p) for p in sorted(grammar.held_out_pairs(cfg.seed))],
        "faces": [
            {"video": r.rel_path, "transcript": r.rel_path[:-4] + ".txt", "text": r.text, "fps": FACE_FPS}
            for r in faces
        ],
        "templates": list(grammar.TEMPLATES),
        "vocab": grammar.vocabulary(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "out"},
    }
    atomic_write_text(cfg.out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    n = len(items)
    log.info(
        "wrote %d utterances in %.1f s (%.1f utt/s) — %s",
        n,
        elapsed,
        n / max(elapsed, 1e-9),
        cfg.out / MANIFEST,
    )
    return manifest
