"""``llama-avsr train``: train Llama-AVSR (ASR, VSR, AVSR) from an experiment config."""

from __future__ import annotations

import argparse
import logging

HELP = "train a model from a recipe (paper/asr, demo/avsr, …) or an experiment YAML, with overrides"
DESCRIPTION = (
    "Train Llama-AVSR with Lightning. A config has sections model / data / train / decode; --config takes "
    "a packaged recipe by name (`llama-avsr config recipes`) or a YAML path. Any key can be overridden as "
    "key.path=value (`llama-avsr config keys` lists them), e.g. train.lr=5e-4 data.max_frames=1500 "
    "train.strategy=ddp train.devices=8. Writes to -o/--out (default: train.out_dir, which is "
    "runs/<recipe> unless the recipe sets it): checkpoints/ "
    "(trainable weights, optimiser, sampler position), logs/ (TensorBoard, CSV, wandb) and model/ "
    "(chosen by train.select: the average of the last train.average_last checkpoints, the last one, or "
    "best_val_wer — the lowest validation WER, logged as val/wer when data.val_csv is set), then "
    "evaluates on data.test_csv when train.eval_at_end is true."
)

EXAMPLES = """\
llama-avsr train --config demo/avsr data.root=demo_out/corpus -o runs/my-avsr
llama-avsr train --config paper/vsr data.root=/data/lrs3 data.train_csv=mine_train.csv train.devices=8
llama-avsr train --config paper/asr --print-config > my_asr.yaml   # edit, then: train --config my_asr.yaml
"""

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="recipe name (paper/asr, demo/avsr, …) or experiment YAML")
    p.add_argument("-o", "--out", default=None, help="run folder (sets train.out_dir)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the folder from its newest complete checkpoint (weights, optimiser, "
        "schedule, data position, random generators)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in the folder: its checkpoints/, logs/, model/, eval/ and JSON files "
        "are deleted first (other files stay); without --resume or --overwrite such a folder is refused",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML and exit (trains nothing)",
    )
    p.add_argument("overrides", nargs="*", help="key.path=value overrides (YAML values)")


def run(args: argparse.Namespace) -> int:
    from llama_avsr.config import ConfigError
    from llama_avsr.experiment import ExperimentConfig

    overrides = [*args.overrides, *([f"train.out_dir={args.out}"] if args.out else [])]
    try:
        exp = ExperimentConfig.load(args.config, overrides)
    except (ConfigError, FileNotFoundError):
        raise
    except (ValueError, KeyError, TypeError) as e:  # a value the config checks refuse
        raise ConfigError(str(e)) from e
    if args.print_config:
        from llama_avsr.config import dump_yaml

        print(dump_yaml(exp.to_dict()), end="")  # noqa: T201
        return 0
    from llama_avsr.training.distributed import is_global_zero
    from llama_avsr.training.run import train

    model_dir = train(exp, resume=args.resume, overwrite=args.overwrite)
    if not is_global_zero():
        return 0  # rank 0 writes the model directory and evaluates it; the other ranks are done
    log.info("model written to %s", model_dir)
    if exp.train.eval_at_end and exp.data.test_csv:
        from llama_avsr.evaluation.run import evaluate_model_dir, results_table

        summary = evaluate_model_dir(model_dir, exp.data, out_dir=model_dir.parent / "eval")
        print(results_table({summary["label"]: summary["by_snr"]}))  # noqa: T201
    return 0
