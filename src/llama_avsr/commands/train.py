"""``llama-avsr train``: train Llama-AVSR (ASR, VSR, AVSR) from an experiment config."""

from __future__ import annotations

import argparse
import logging

HELP = "train a model from an experiment config (YAML) with command-line overrides"
DESCRIPTION = (
    "Train Llama-AVSR with Lightning. The config file has sections model / data / train / decode "
    "(see configs/). Any field can be overridden as key.path=value, e.g. train.lr=5e-4 "
    "data.max_frames=1500 train.strategy=ddp train.devices=8. Writes <train.out_dir>/checkpoints "
    "(trainable weights, optimiser, sampler position), logs/ (TensorBoard, CSV, wandb) and model/ "
    "(the average of the last train.average_last checkpoints), then evaluates on data.test_csv when "
    "train.eval_at_end is true."
)

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="experiment YAML")
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoints/last.ckpt")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides (YAML values)")


def run(args: argparse.Namespace) -> int:
    from llama_avsr.training.config import ExperimentConfig
    from llama_avsr.training.distributed import is_global_zero
    from llama_avsr.training.run import train

    exp = ExperimentConfig.load(args.config, args.overrides)
    model_dir = train(exp, resume=args.resume)
    if not is_global_zero():
        return 0  # rank 0 writes the model directory and evaluates it; the other ranks are done
    log.warning("model written to %s", model_dir)
    if exp.train.eval_at_end and exp.data.test_csv:
        from llama_avsr.evaluation.run import evaluate_model_dir

        evaluate_model_dir(model_dir, exp.data, out_dir=model_dir.parent / "eval")
    return 0
