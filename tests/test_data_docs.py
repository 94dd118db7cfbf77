"""docs/data.md's walk-through, run as written: generated face videos → `prepare` with splits and the
length filter → `train` → `eval`. The one change: a tiny random model stands in for the `demo/asr`
recipe (and a few steps for its time budget), so that the test trains in seconds."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from llama_avsr.cli import main
from llama_avsr.synth import tts

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "data.md"
TINY = REPO / "tests" / "configs" / "tiny_avsr.yaml"


def walkthrough() -> list[list[str]]:
    """The ``llama-avsr`` command lines of the fenced block that follows ``<!-- walkthrough -->``."""
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- walkthrough -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "docs/data.md lost its walk-through block"
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert all(line.startswith("llama-avsr ") for line in lines)
    return [shlex.split(line)[1:] for line in lines]


def test_walkthrough_is_the_documented_path():
    commands = [c[0] for c in walkthrough()]
    assert commands == ["synth", "prepare", "train", "eval"]
    prepare = walkthrough()[1]
    assert "--split-ratio" in prepare and "--max-seconds" in prepare


@pytest.mark.slow  # ≈ 2 minutes on 2 cores: synthesis, face detection, training, decoding
@pytest.mark.skipif(not tts.available(), reason="espeak-ng is not installed")
def test_docs_walkthrough_raw_videos_to_wer(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mediapipe")
    monkeypatch.chdir(tmp_path)
    synth, prepare, train, evaluate = walkthrough()
    assert main(synth) == 0
    raw = sorted(Path("faces/raw").rglob("*.mp4"))
    assert len(raw) == 6 and len({p.parent.name for p in raw}) > 1  # full-face videos, several speakers

    assert main(prepare) == 0
    labels = Path("corpus/labels")
    rows = {s: (labels / f"mine_{s}.csv").read_text().splitlines() for s in ("train", "val", "test")}
    assert sum(len(r) for r in rows.values()) == 6 and all(rows.values())
    speakers = {s: {line.split(",")[1].split("/")[-2] for line in r} for s, r in rows.items()}
    assert not (speakers["train"] & speakers["val"] or speakers["train"] & speakers["test"])
    assert "splits: train" in capsys.readouterr().out

    i = train.index("--config")
    tiny = [*train[:i], "--config", str(TINY), *train[i + 2 :]]
    noise = next(Path("faces").rglob("*.wav"))
    assert main([*tiny, "train.max_steps=2", f"data.noise_file={noise}"]) == 0
    assert Path("runs/mine/model/config.json").is_file()

    assert main(evaluate) == 0
    out = capsys.readouterr().out
    assert "clean" in out and out.count("WER %") == 1  # the table, printed once
    (summary,) = json.loads(Path("runs/mine/eval/results.json").read_text()).values()
    assert set(summary["by_snr"]) == {"clean", "0"}
    assert summary["by_snr"]["clean"]["utterances"] == len(rows["test"])
