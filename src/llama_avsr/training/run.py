"""``train``: build the Lightning trainer from an experiment config, fit, average the last checkpoints
and write the final model directory."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from llama_avsr.model_dir import save_model_dir
from llama_avsr.training.config import ExperimentConfig
from llama_avsr.training.module import AVSRData, AVSRLightning

log = logging.getLogger(__name__)


def _loggers(exp: ExperimentConfig, out: Path) -> list[Any]:
    from lightning.pytorch import loggers as pl_loggers

    made: list[Any] = []
    for name in exp.train.loggers:
        if name == "tensorboard":
            made.append(pl_loggers.TensorBoardLogger(out / "logs", name="tensorboard", version=""))
        elif name == "csv":
            made.append(pl_loggers.CSVLogger(out / "logs", name="csv", version=""))
        elif name == "wandb":
            made.append(pl_loggers.WandbLogger(save_dir=str(out / "logs"), project="llama-avsr"))
    return made


def _precision(requested: str) -> str:
    """bf16 where the hardware has it; otherwise fall back to fp32 with a warning."""
    if "bf16" in requested and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16: training in fp32 instead of %s", requested)
        return "32-true"
    return requested


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the (trainable) ``state_dict`` of Lightning checkpoints.

    Loaded with ``weights_only=True``; integer buffers (e.g. BatchNorm counters) come from the last.
    """
    if not paths:
        raise ValueError("no checkpoints to average")
    acc: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    for p in paths:
        sd = torch.load(p, map_location="cpu", weights_only=True)["state_dict"]
        if acc and set(sd) != set(acc):
            raise ValueError(f"{p}: holds different weights than {paths[0]}")
        for k, v in sd.items():
            if v.is_floating_point():
                acc[k] = acc[k] + v.double() if k in acc else v.double()
            else:
                acc[k] = v
            last[k] = v
    return {
        k.removeprefix("model."): (v / len(paths)).to(last[k].dtype) if last[k].is_floating_point() else v
        for k, v in acc.items()
    }


def checkpoints_in_order(ckpt_dir: Path) -> list[Path]:
    """Saved checkpoints (excluding ``last.ckpt``), oldest first by recorded global step."""
    found = []
    for p in ckpt_dir.glob("*.ckpt"):
        if p.name.startswith("last"):
            continue
        step = int(p.stem.split("step=")[-1].split("-")[0]) if "step=" in p.stem else -1
        found.append((step, p.stat().st_mtime, p))
    return [p for _, _, p in sorted(found)]


def train(exp: ExperimentConfig, resume: bool = False) -> Path:
    """Fit and write ``<out_dir>/model``. ``resume`` continues from ``checkpoints/last.ckpt``."""
    t = exp.train
    out = Path(t.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(exp.to_dict(), indent=2))
    L.seed_everything(t.seed, workers=True, verbose=False)

    module = AVSRLightning(exp)
    data = AVSRData(exp, module)
    ckpt_dir = out / "checkpoints"
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="{epoch}-step={step}",
        save_top_k=-1,
        save_last=True,
        every_n_train_steps=t.checkpoint_every_steps or None,
        save_on_train_epoch_end=True,
        auto_insert_metric_name=False,
    )
    trainer = L.Trainer(
        default_root_dir=str(out),
        max_epochs=t.epochs if t.max_steps <= 0 else -1,
        max_steps=t.max_steps,
        max_time={"minutes": t.max_minutes} if t.max_minutes else None,
        precision=_precision(t.precision),
        accelerator=t.accelerator,
        strategy=t.strategy,
        devices=t.devices,
        num_nodes=t.num_nodes,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        logger=_loggers(exp, out) or False,
        callbacks=[checkpoint, TQDMProgressBar(refresh_rate=1)],
        log_every_n_steps=t.log_every_steps,
        val_check_interval=t.val_every_steps or None,
        check_val_every_n_epoch=None if t.val_every_steps else 1,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the frame-budget sampler shards by rank itself
        enable_model_summary=False,
    )
    ckpt_path = None
    if resume:
        last = ckpt_dir / "last.ckpt"
        if last.is_file():
            ckpt_path = str(last)
            log.info("resuming from %s", last)
        else:
            log.warning("--resume: no %s yet, starting from scratch", last)
    start = time.time()
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    elapsed = time.time() - start
    # a run that stops between checkpoint intervals (max_steps, time budget) still ends with its final
    # weights on disk, so the averaged model includes them (all ranks take part: sharded strategies)
    saved = checkpoints_in_order(ckpt_dir)
    if trainer.global_step > 0 and not any(p.stem.endswith(f"step={trainer.global_step}") for p in saved):
        trainer.save_checkpoint(ckpt_dir / f"{trainer.current_epoch}-step={trainer.global_step}.ckpt")

    if trainer.global_rank != 0:
        return out / "model"
    ckpts = checkpoints_in_order(ckpt_dir)[-t.average_last :]
    if not ckpts and (ckpt_dir / "last.ckpt").is_file():
        ckpts = [ckpt_dir / "last.ckpt"]
    state = average_checkpoints(ckpts) if ckpts else None
    log.info("final model: average of %d checkpoint(s): %s", len(ckpts), [p.name for p in ckpts])
    stats = {
        "train_steps": int(trainer.global_step),
        "train_seconds": round(elapsed, 1),
        "train_utterances": module.utterances_seen,
        "train_utterances_per_second": round(module.utterances_seen / max(elapsed, 1e-9), 2),
    }
    model_dir = save_model_dir(module.model, exp, out / "model", state=state, results={"training": stats})
    return model_dir
