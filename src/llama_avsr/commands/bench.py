"""``llama-avsr bench``: measure training, encoding and decoding speed and the speed-ups."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex

from llama_avsr.io import atomic_write_json

HELP = "benchmark training / encoder / decoding speed, memory, FLOP/s and each speed-up (JSON + table)"
DESCRIPTION = (
    HELP + ". The config is an experiment config (model / data / train / decode) with a `bench:` "
    "section (see configs/bench/ and llama_avsr/benchmark/config.py). Inputs are synthesised (espeak-ng "
    "speech of the requested lengths when installed, else noise; random video), so no corpus is needed. "
    "Each speed-up is measured against the paper-exact path in the same run: Whisper on 30 s padding, "
    "no feature cache, one utterance at a time, the prompt run once per beam, eager attention, fp32."
)
EXAMPLES = """\
llama-avsr bench --config configs/bench/asr-demo.yaml -o bench-asr-demo.json
llama-avsr bench --config configs/bench/cpu-published.yaml --sections decode bench.decode_utterances=4
llama-avsr bench --config configs/bench/gpu-paper.yaml -o bench-gpu-paper.json
llama-avsr bench --config configs/bench/gpu.yaml --device cuda --sections train,decode
llama-avsr bench --config configs/bench/asr-demo.yaml --model runs/demo-asr/model --sections decode
"""

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="benchmark YAML (e.g. configs/bench/asr-demo.yaml)")
    p.add_argument(
        "--model",
        default=None,
        help="bench this model directory (trained weights; replaces the config's model section, the "
        "other sections still apply): decoding then runs on real transcripts, not an untrained model's",
    )
    p.add_argument("-o", "--out", default=None, help="write the JSON report here")
    p.add_argument(
        "--device",
        default=None,
        help="torch device, overriding bench.device: auto (a GPU when there is one), cpu, cuda",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (overrides bench.threads)")
    p.add_argument("--sections", default=None, help="comma-separated subset of the sections to run")
    p.add_argument(
        "overrides", nargs="*", help="key.path=value overrides, e.g. bench.repeats=5 decode.num_beams=15"
    )


def run(args: argparse.Namespace) -> int:
    from llama_avsr.benchmark import format_report, load_bench_config, run_bench

    overrides = list(args.overrides)
    if args.device:
        from llama_avsr.commands import resolve_device

        overrides.append(f"bench.device={resolve_device(args.device)}")
    if args.threads:
        overrides.append(f"bench.threads={args.threads}")
    if args.sections:
        overrides.append(f"bench.sections=[{args.sections}]")
    exp, cfg = load_bench_config(args.config, overrides)
    model = weights = None
    if args.model:
        from llama_avsr.model_dir import load_model_dir

        model, trained = load_model_dir(args.model)
        exp = dataclasses.replace(exp, model=trained.model)
        weights = f"model directory {args.model}"
    report = run_bench(exp, cfg, model, weights)
    given = ["--config", args.config]
    for flag in ("model", "out", "device", "threads", "sections"):
        if getattr(args, flag) is not None:
            given += [f"--{flag}", str(getattr(args, flag))]
    report["command"] = "llama-avsr bench " + " ".join(shlex.quote(a) for a in [*given, *args.overrides])
    report["config_file"] = str(args.config)
    if args.out:
        atomic_write_json(args.out, report)
        log.info("bench report written to %s", args.out)
    print(format_report(report))  # noqa: T201
    return 0
