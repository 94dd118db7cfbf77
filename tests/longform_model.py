"""A small AVSR model that really transcribes, trained once per test cache: the demo configuration
(Whisper tiny.en + the lipconv lip-reading encoder + SmolLM2-135M) on a synthetic corpus, for a fixed number of steps
(not a time budget: the model must not depend on the machine's load)."""

from __future__ import annotations

import csv
from pathlib import Path

from llama_avsr.cli import main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src" / "llama_avsr" / "configs" / "demo" / "avsr.yaml"
#: bump to retrain the cached model
VERSION = "v4"
STEPS = 250


def label_csv(corpus: Path, split: str) -> Path:
    return next(
        p for p in (corpus / "labels" / f"synth_{split}.csv", corpus / f"synth_{split}.csv") if p.exists()
    )


def longest_utterance(csv_file: Path) -> float:
    """Seconds of the longest utterance of a label CSV (25 fps frame counts)."""
    with csv_file.open() as f:
        return max(int(row[2]) for row in csv.reader(f)) / 25


def build(root: Path) -> tuple[Path, Path]:
    """(model directory, corpus) under ``root``, trained unless already there."""
    corpus, run = root / "corpus", root / "run"
    model = run / "model"
    if (model / "trainable.safetensors").is_file() and (corpus / "synth.json").is_file():
        return model, corpus
    if not (corpus / "synth.json").is_file():
        args = ["synth", "--out", str(corpus), "--train", "800", "--val", "4", "--test", "40"]
        assert main([*args, "--faces", "0", "--jobs", "2", "--seed", "3"]) == 0
    longest = longest_utterance(label_csv(corpus, "train"))
    overrides = [
        f"data.root={corpus}",
        "data.val_csv=null",
        "train.select=last",
        f"train.out_dir={run}",
        "train.max_minutes=null",
        "train.schedule=steps",
        f"train.max_steps={STEPS}",
        "train.ctc_warmup_streams={audio: 4, video: 1}",
        "train.checkpoint_every_steps=0",
        # clean training audio, Whisper features cached: this model is about long recordings, not noise
        # and no lip-encoder alignment (the demo recipe trains with noisy audio and aligned lip targets
        # since issue 14)
        "data.train_augment=[video]",
        "data.augment_variants={}",
        "train.warmup_aligners=null",
        "train.feature_cache=memory",
        "train.loggers=[csv]",
        # segments no longer than the training utterances
        f"decode.max_segment_seconds={longest + 0.5:.2f}",
    ]
    assert main(["train", "--config", str(DEMO), *overrides]) == 0
    return model, corpus


def concatenate_utterances(
    corpus: Path, out: Path, count: int, split: str = "test", gap: float = 0.4
) -> tuple[Path, list[tuple[Path, str]]]:
    """A long recording made of ``count`` consecutive utterances of ``split`` (label-CSV order):
    ``out.mp4`` (96x96 mouth video, 25 fps) with ``out.wav`` beside it, ``gap`` seconds of silence (and
    a still mouth) between utterances. Returns the mp4 and the (mp4, transcript) pairs used, in order."""
    import numpy as np

    from llama_avsr import media

    with label_csv(corpus, split).open() as f:
        rows = [r for r in csv.reader(f)]
    items = [(corpus / r[0] / r[1], r[4]) for r in rows]
    items = items[:count]
    assert len(items) == count, f"{split} has only {len(items)} utterances"
    videos, audios = [], []
    still = int(round(gap * 25))
    for mp4, _ in items:
        frames, fps = media.read_video(mp4, gray=True)
        frames = media.resample_frames(frames, fps)
        wav = media.read_audio(mp4.with_suffix(".wav"))
        n = len(frames) * 640
        wav = wav[:n] if len(wav) >= n else np.pad(wav, (0, n - len(wav)))
        videos += [frames, np.repeat(frames[-1:], still, axis=0)]
        audios += [wav, np.zeros(still * 640, np.float32)]
    out.parent.mkdir(parents=True, exist_ok=True)
    media.write_video(out.with_suffix(".mp4"), np.concatenate(videos))
    media.write_wav(out.with_suffix(".wav"), np.concatenate(audios))
    return out.with_suffix(".mp4"), items
