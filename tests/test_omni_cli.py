"""A multi-task, multi-rate model through the commands: train (tiny random models, a few steps on the
synthetic corpus) → eval of every task × rate with its cost → transcribe at chosen rates."""

from __future__ import annotations

import json

import pytest
from test_end_to_end import TINY, common, corpus, face_video  # noqa: F401  (corpus is a fixture)

from llama_avsr.cli import main
from llama_avsr.synth import tts

# about two minutes on a 2-core CPU: the fast default suite covers the same in tests/test_omni.py
pytestmark = [pytest.mark.skipif(not tts.available(), reason="espeak-ng is not installed"), pytest.mark.slow]

OMNI = [
    "model.tasks=[asr, vsr, avsr]",
    "model.streams.audio.compression={kind: stack, ratios: [4, 8]}",
    "model.streams.video.compression={kind: stack, ratios: [2, 4]}",
    "model.llm.lora={reduction: 8, alpha: 8, strategy: shared+specific, specific_to: task}",
    "train.task_sampling=utterance",
    "train.rate_sampling=sample",
]


def test_one_model_trains_on_three_tasks_and_two_rates_then_decodes_every_combination(
    request, tmp_path, capsys
):
    root = request.getfixturevalue("corpus")  # test_end_to_end's synthetic corpus
    out = tmp_path / "run"
    assert main(["train", "--config", str(TINY), *common(root, out), "train.max_steps=2", *OMNI]) == 0
    model = out / "model"
    card = (model / "README.md").read_text()
    assert "task `vsr`: streams video" in card and "stack ×4/8" in card

    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "tokens/s media" in printed and "avsr audio8_video4" in printed
    (grid,) = [v for k, v in json.loads((model / "results.json").read_text()).items() if k == "evaluation"]
    labels = [g["label"] for g in grid["grid"]]
    assert labels == [
        "asr audio4", "asr audio8", "vsr video2", "vsr video4",
        "avsr audio4_video2", "avsr audio4_video4", "avsr audio8_video2", "avsr audio8_video4",
    ]  # fmt: skip
    clean = {g["label"]: g["by_snr"]["clean"] for g in grid["grid"]}
    assert (tmp_path / "eval" / "wer_vs_tokens.png").stat().st_size > 1000
    for r in clean.values():
        assert r["utterances"] == 3 and 0 <= r["wer"] and r["llm_prefill_gflops_per_utterance"] > 0
    # the cost side: audio at 50 Hz → 12.5 / 6.25 tokens a second at rates 4 / 8 (remainders dropped)
    assert 11 < clean["asr audio4"]["llm_media_tokens_per_second"] <= 12.5
    assert (
        clean["asr audio8"]["llm_media_tokens_per_second"]
        < clean["asr audio4"]["llm_media_tokens_per_second"] / 1.8
    )
    assert (
        clean["avsr audio8_video4"]["llm_prefill_gflops_per_utterance"]
        < clean["avsr audio4_video2"]["llm_prefill_gflops_per_utterance"]
    )

    video = str(face_video(root))
    capsys.readouterr()
    assert (
        main(["transcribe", "--model", str(model), "--json", "--task", "asr", "--rates", "audio=8", video])
        == 0
    )
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "text" in rec and rec["seconds"] > 0.5
    # a rate the model was not trained at: one line, no traceback
    assert main(["transcribe", "--model", str(model), "--rates", "audio=16", video]) != 0
    err = capsys.readouterr().err
    assert "trained at rates [4, 8], not 16" in err and "Traceback" not in err
