"""``llama-avsr eval``: WER/CER of a trained model on a labelled split, clean and under babble noise."""

from __future__ import annotations

import argparse

from llama_avsr.commands.argtypes import positive_int, rate_map, snr_list
from llama_avsr.config import TASKS

HELP = "evaluate a model directory: WER/CER (+S/I/D), per-utterance JSONL, SNR sweep table, JSON and plot"
DESCRIPTION = (
    HELP + ". Text is normalised before scoring (lower-case, punctuation except apostrophes removed, "
    "spaces collapsed; see llama_avsr/evaluation/metrics.py). WER is reported over all items, on voices "
    "seen in training and on held-out voices (speaker = the folder holding the utterance; seen = it has "
    "an utterance in the training CSV), and per speaker; unreadable items are counted (--score-skipped "
    "scores them as full errors). Results go to --out: <label>_<snr>.jsonl, results.json and "
    "wer_vs_snr.png; they are also merged into the model directory's results.json. Choose settings with "
    "--split val; run the test split once per reported configuration."
)

EXAMPLES = """\
llama-avsr eval --model runs/paper-avsr/model --split val
llama-avsr eval --model runs/paper-avsr/model --snr clean,10,5,0,-5
llama-avsr eval --model models/vsr-released --root /data/lrs3 --csv lrs3_test_transcript_lengths_seg24s_LLM_lowercase.csv
llama-avsr eval --model runs/demo-avsr/model --noise-file babble_noise.wav --snr 0 -o eval/babble0
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="model directory (written by `llama-avsr train` / `import-reference`) or a hub repo id",
    )
    p.add_argument("--root", default=None, help="corpus root (default: the one the model was trained on)")
    p.add_argument(
        "--split",
        default="test",
        choices=("val", "test"),
        help="which label CSV of the config to evaluate: val (for choosing settings) or test",
    )
    p.add_argument("--csv", default=None, help="label CSV to evaluate (default: the config's one of --split)")
    p.add_argument(
        "--score-skipped",
        action="store_true",
        help="score items that cannot be read as full errors (default: leave them out of the WER, counted)",
    )
    p.add_argument(
        "--snr", type=snr_list, default="clean", help="comma-separated SNRs in dB, e.g. clean,10,5,0,-5"
    )
    p.add_argument(
        "--noise-file",
        default=None,
        help="noise file mixed in at --snr (sets data.eval_noise_file; default: the model config's, or the "
        "synthetic evaluation babble track, whose talkers are not those of the training track)",
    )
    p.add_argument(
        "--beams", type=positive_int, default=None, help="beam size (default: the model's decode config)"
    )
    p.add_argument("--batch-size", type=positive_int, default=None, help="utterances decoded together")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="longest transcript in tokens")
    p.add_argument("--label", default=None, help="name of this model in tables and plots")
    p.add_argument(
        "-o",
        "--out",
        default=None,
        help="output folder (default: <model>/eval; ./eval/<owner>__<name> for a hub repo id)",
    )
    p.add_argument(
        "--streams", default=None, help="use only these streams, e.g. audio (the others are blanked)"
    )
    p.add_argument(
        "--task",
        choices=tuple(TASKS),
        default=None,
        help="multi-task models: the task (default: every task of the model)",
    )
    p.add_argument(
        "--rates",
        type=rate_map,
        default=None,
        help="multi-rate models: compression rate per stream, e.g. audio=16,video=5 (fewer LLM tokens: "
        "faster, usually less accurate; default: every rate combination)",
    )
    p.add_argument(
        "--device", default="auto", help="torch device: auto (a GPU when there is one), cpu, cuda:0, …"
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="cast the whole model to this dtype before decoding, e.g. float32 to compare a bf16 model's "
        "WER with full precision; labelled <label>@<dtype>, and not written into the model's card "
        "(default: the dtypes the model was saved with)",
    )


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from llama_avsr.evaluation.run import evaluate_model_dir, parse_snrs
    from llama_avsr.model_dir import load_experiment

    exp = load_experiment(args.model)
    data = exp.data
    changes = {
        k: v
        for k, v in {
            "root": args.root,
            f"{args.split}_csv": args.csv,
            "eval_noise_file": args.noise_file,
        }.items()
        if v
    }
    data = dataclasses.replace(data, **changes)
    dec = exp.decode
    dchanges = {"num_beams": args.beams, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}
    dec = dataclasses.replace(dec, **{k: v for k, v in dchanges.items() if v is not None})
    from llama_avsr.commands import resolve_device
    from llama_avsr.errors import UserError
    from llama_avsr.evaluation.report import cost_table, results_table, speaker_table

    try:
        summary = evaluate_model_dir(
            args.model, data, args.out, parse_snrs(args.snr), args.split, dec, args.label,
            resolve_device(args.device), skipped_as_errors=args.score_skipped, streams=args.streams,
            task=args.task, rates=args.rates, dtype=args.dtype,
        )  # fmt: skip
    except ValueError as e:
        if "task" in str(e) or "rates" in str(e):
            raise UserError(str(e)) from e
        raise
    if "grid" in summary:  # a multi-task / multi-rate model: every task x rate, with its cost
        print(results_table({g["label"]: g["by_snr"] for g in summary["grid"]}))  # noqa: T201
        print("\n" + cost_table(summary["grid"]))  # noqa: T201
        return 0
    print(speaker_table(summary["by_snr"]) + "\n")  # noqa: T201
    print(results_table({summary["label"]: summary["by_snr"]}))  # noqa: T201
    return 0
