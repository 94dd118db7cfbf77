"""`llama-avsr bench` on the tiny configuration (a smoke test: the report has its keys; no timed
assertions), its config handling, and the decoding speed-up it measures (same transcripts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llama_avsr.benchmark import SECTIONS, BenchConfig, format_report, load_bench_config
from llama_avsr.cli import main
from llama_avsr.decoding.search import generate

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "bench" / "tiny.yaml"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    assert main(["bench", "--config", str(TINY), "--out", str(out), "bench.lengths=[1]"]) == 0
    return json.loads(out.read_text())


def test_bench_report_has_every_section_and_figure(report):
    assert set(SECTIONS) <= set(report)
    env = report["environment"]
    assert env["device"] == "cpu" and env["torch_threads"] >= 1 and env["versions"]["torch"]
    assert report["matmul"]["float32"]["flops_per_s"] > 0
    modes = {(e["encoder"], e["mode"]) for e in report["encoder"]}
    assert {("whisper", "true-length"), ("whisper", "padded-30s"), ("avhubert", "configured")} <= modes
    (row,) = report["train"]
    for key in (
        "step_s",
        "samples_per_s",
        "encoder_s",
        "llm_step_s",
        "llm_tokens_per_s",
        "llm_train_flops_per_s",
        "llm_train_mfu",
        "peak_memory",
    ):
        assert key in row, key
    assert row["step_s"]["min"] <= row["step_s"]["median"] and row["peak_memory"]["rss_mib"] > 0
    assert report["whisper"]["whisper"]["feature_cosine"]["mean"] > 0.5
    fc = report["feature_cache"]
    assert fc["configured"]["cached_encoders"] == ["whisper"]  # the video encoder trains
    assert fc["paper-exact (padded-30s)"]["first_epoch_s"] > 0
    dec = report["decode"]
    assert dec["identical_transcripts"] == dec["utterances"] == 4
    assert dec["identical_prefill_once_vs_per_beam"] == 4
    assert {"utterances_per_s", "real_time_factor"} <= set(dec["batched"])
    # the exact path is one utterance at a time with the prompt per beam; the fast one batches
    assert dec["one_at_a_time"]["batch_size"] == 1 and not dec["one_at_a_time"]["prefill_once"]
    assert dec["batched"]["prefill_once"] and dec["batched"]["batch_size"] == 4
    assert dec["greedy"]["identical_transcripts"] == 4 and dec["greedy"]["batched"]["num_beams"] == 1
    assert dec["speedup_vs_paper_exact"] > 0  # tiny.yaml's Whisper runs on the true length
    assert dec["paper_exact"]["batch_size"] == 1
    assert "train_step_s" in report["attention"]["eager"]
    assert "workers=0" in report["data"] and report["data"]["workers=0"]["batches"] >= 1
    assert set(report["targets"]) == {
        "whisper_true_length_vs_padded",
        "feature_cache_epochs",
        "beam_decoding",
        "greedy_decoding",
        "paper_exact_train_step",
    }  # one length: no length fit
    assert "llama-avsr bench --config" in report["command"]
    table = format_report(report)
    assert "speed-ups" in table and "targets:" in table and "decoding" in table and "greedy" in table


def test_bench_config_splits_experiment_and_bench_sections():
    exp, cfg = load_bench_config(TINY, ["bench.repeats=5", "decode.num_beams=3"])
    assert cfg.repeats == 5 and exp.decode.num_beams == 3 and exp.model.llm.arch == "tiny-llama"
    with pytest.raises(ValueError, match="unknown"):
        load_bench_config(TINY, ["bench.sections=[nope]"])
    with pytest.raises(ValueError, match="unknown key"):
        load_bench_config(TINY, ["bench.speed=1"])
    assert BenchConfig(sections=["decode"]).runs("decode") and not BenchConfig(sections=["decode"]).runs(
        "train"
    )


def test_prompt_once_per_utterance_gives_the_transcripts_of_the_per_beam_search(smollm2_dir):
    """The decoding speed-up (prompt through the LLM once, KV cache copied to the beams) changes no
    transcript, batched or one at a time."""
    import dataclasses

    from llama_avsr.data.collate import Collator
    from llama_avsr.models.avsr import AVSRModel

    exp, _ = load_bench_config(TINY, [f"model.llm.tokenizer={smollm2_dir}"])
    torch.manual_seed(0)
    model = AVSRModel(exp.model).eval()
    with torch.no_grad():  # LoRA B starts at zero: make the adapters matter
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    g = torch.Generator().manual_seed(0)
    samples = [
        {"id": str(i), "text": "", "audio": torch.randn(n, generator=g), "video": torch.randn(f, 1, 88, 88)}
        for i, (n, f) in enumerate([(16000, 25), (20480, 32), (9600, 15)])
    ]
    col = Collator(model.tokenizer, ["audio", "video"], with_targets=False)
    opts = dataclasses.replace(exp.decode, num_beams=3, max_new_tokens=6)
    per_beam = generate(model, col(samples), dataclasses.replace(opts, prefill_once=False))
    once = generate(model, col(samples), opts)
    assert once == per_beam
    assert once == [generate(model, col([s]), opts)[0] for s in samples]


def test_bench_a_model_directory_judges_identity_in_float32(tmp_path):
    """`--model DIR` benches the directory's model (its config replaces the bench config's model
    section); with a bf16 LLM the decoding identity is also checked with the LLM upcast to float32,
    and the bf16 weights are restored afterwards."""
    from llama_avsr.benchmark.run import Bench
    from llama_avsr.model_dir import save_pretrained
    from llama_avsr.models.avsr import AVSRModel

    exp, cfg = load_bench_config(TINY, ["model.llm.dtype=bfloat16"])
    torch.manual_seed(0)
    model = AVSRModel(exp.model)
    save_pretrained(model, tmp_path / "model", exp)
    bench = Bench(exp, cfg, model)
    before = {n: p.clone() for n, p in model.llm.named_parameters()}
    with bench.float32_llm():
        assert all(p.dtype == torch.float32 for p in model.llm.parameters())
    after = dict(model.llm.named_parameters())
    assert all(after[n].dtype == p.dtype and torch.equal(after[n], p) for n, p in before.items())

    out = tmp_path / "bench.json"
    args = ["bench", "--config", str(TINY), "--model", str(tmp_path / "model"), "--sections", "decode"]
    assert main([*args, "--out", str(out), "bench.precision=bf16-mixed"]) == 0
    report = json.loads(out.read_text())
    assert report["model"]["weights"] == f"model directory {tmp_path / 'model'}"
    assert report["model"]["llm_dtype"] == "bfloat16"  # from the directory; tiny.yaml has float32
    dec = report["decode"]
    assert dec["compute_dtype"] == "bfloat16"
    assert dec["identical_transcripts_float32"] == dec["utterances"] == 4
    assert report["targets"]["beam_decoding"]["identical_transcripts_float32"] == "4/4"
    assert "--model" in report["command"] and "float32" in format_report(report)
    # the fast path in bf16 against the paper-exact loop in float32 (the published code's setting)
    paper32 = dec["paper_exact_float32"]
    assert paper32["batch_size"] == 1 and paper32["prefill_once"] is False
    assert dec["speedup_vs_paper_exact_float32"] == pytest.approx(
        dec["batched"]["utterances_per_s"] / paper32["utterances_per_s"], rel=1e-3
    )
    target = report["targets"]["beam_decoding_vs_paper_exact_float32"]
    assert target["measured"] == dec["speedup_vs_paper_exact_float32"]
    assert target["identical_transcripts_float32"] == "4/4"
    assert "paper-exact loop in float32" in format_report(report)


def test_bench_rates_section_reports_the_cost_of_every_task_and_rate(tmp_path):
    """A multi-task, multi-rate model: one row per task × rate; stronger compression, fewer LLM tokens."""
    out = tmp_path / "bench.json"
    overrides = [
        "bench.sections=[rates]",
        "model.tasks=[asr, avsr]",
        "model.streams.audio.compression={kind: stack, ratios: [2, 4]}",
        "bench.decode_utterances=2",
    ]
    assert main(["bench", "--config", str(TINY), "--out", str(out), *overrides]) == 0
    rates = json.loads(out.read_text())["rates"]
    rows = {(r["task"], tuple(r["rates"].values())): r for r in rates["combinations"]}
    assert set(rows) == {("asr", (2,)), ("asr", (4,)), ("avsr", (2, 2)), ("avsr", (4, 2))}
    assert rates["reference"] == "avsr {'audio': 2, 'video': 2}"
    tok = {k: r["llm_media_tokens_per_second"] for k, r in rows.items()}
    assert tok["asr", (4,)] < tok["asr", (2,)] < tok["avsr", (2, 2)]
    assert (
        rows["avsr", (4, 2)]["llm_prefill_flops_per_utterance"]
        < rows["avsr", (2, 2)]["llm_prefill_flops_per_utterance"]
    )
    assert rows["avsr", (2, 2)]["decode_speedup"] == 1.0
    assert "task x rates" in format_report(json.loads(out.read_text()))


def test_length_fit_recovers_a_line_and_an_exponent():
    from llama_avsr.benchmark.run import length_scaling, linear_fit

    fit = linear_fit([2.0, 5.0, 10.0, 20.0], [0.2, 0.5, 1.0, 2.0])
    assert fit["slope"] == pytest.approx(0.1) and fit["intercept"] == pytest.approx(0.0, abs=1e-12)
    assert fit["r2"] == pytest.approx(1.0) and fit["exponent"] == pytest.approx(1.0)
    quadratic = linear_fit([2.0, 5.0, 10.0, 20.0], [4.0, 25.0, 100.0, 400.0])
    assert quadratic["exponent"] == pytest.approx(2.0) and quadratic["r2"] < 1.0
    rows = [{"seconds": s, "step_s": {"min": 1.0 + s}} for s in (2.0, 20.0)]
    scaling = length_scaling({"train": rows, "encoder": []})
    assert scaling["train_step"]["slope"] == pytest.approx(1.0)
    assert scaling["train_step"]["exponent"] < 1.0  # a fixed cost on top of a linear one


def test_gpu_paper_bench_runs_on_a_cpu_with_tiny_architectures(tmp_path, smollm2_dir):
    """configs/bench/gpu-paper.yaml (the paper's AVSR recipe in the real architectures, for a GPU) is a
    valid bench config: the same file with the tiny architectures swapped in runs on a CPU and reports
    the training step's MFU and memory and the decoding speed-ups."""
    out = tmp_path / "bench.json"
    tiny = [
        "model.encoders.whisper.arch=tiny-whisper",
        "model.encoders.whisper.dtype=float32",
        "model.encoders.avhubert.arch=tiny-avhubert",
        "model.llm.arch=tiny-llama",
        f"model.llm.tokenizer={smollm2_dir}",
        "model.llm.dtype=float32",
        "train.precision=32-true",
        "decode={num_beams: 2, max_new_tokens: 3, batch_size: 2}",
        "bench={batch_size: 2, lengths: [1, 2], compare_seconds: 1, repeats: 1, warmup: 0, speech: false, "
        "decode_utterances: 2, matmul_size: 128}",
    ]
    args = ["bench", "--config", str(REPO / "configs" / "bench" / "gpu-paper.yaml"), "--device", "cpu"]
    assert main([*args, "--sections", "matmul,train,decode", "--out", str(out), *tiny]) == 0
    report = json.loads(out.read_text())
    assert report["model"]["modalities"] == ["audio", "video"]
    assert [r["seconds"] for r in report["train"]] == [1, 2] and report["train"][0]["llm_train_mfu"] > 0
    assert report["decode"]["identical_transcripts"] == 2 and report["decode"]["greedy"]["speedup"] > 0
    assert "paper_exact" not in report["decode"]  # the paper recipe's Whisper is already padded
    assert report["length_scaling"]["train_step"]["r2"] == pytest.approx(1.0)
    assert "cost_linear_in_length" in report["targets"]
