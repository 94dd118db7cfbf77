"""``train``: build the Lightning trainer from an experiment config, fit, average the last checkpoints
and write the final model directory.

Under any strategy only rank 0 writes ``experiment.json``, logs, the averaged model directory and its
results (checkpoint files are written by Lightning: rank 0 alone, or every rank its shard with FSDP /
DeepSpeed). Sharded checkpoints are consolidated here, on rank 0, into the usual model directory: the
trainable weights only, plus the references to the base models in the config.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

from llama_avsr.devices import resolve_precision
from llama_avsr.logs import tidy_library_loggers
from llama_avsr.model_dir import save_model_dir
from llama_avsr.models.avsr import AVSRModel
from llama_avsr.training.config import ExperimentConfig
from llama_avsr.training.distributed import (
    FSDP_METADATA,
    TrainableFSDPStrategy,
    build_strategy,
    clean_name,
    consolidate_checkpoint,
    is_global_zero,
    read_trainable_state,
    set_rank,
)
from llama_avsr.training.module import AVSRData, AVSRLightning

log = logging.getLogger(__name__)
tidy_library_loggers()  # Lightning's import attached its own handler: one line per record, not two


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
    """bf16 where the hardware has it (``auto``); a GPU without bf16 falls back to fp32 with a warning."""
    return resolve_precision(requested)


class _Checkpoints(ModelCheckpoint):
    """ModelCheckpoint that knows, after a resume, that the restored step is already saved, and that
    writes ``last.ckpt`` over the directory of shards a sharded run left there.

    Lightning does not restore the first, so with gradient accumulation the first batch after a resume
    (the optimiser step count unchanged) wrote a second checkpoint of the restored step in mid-window.
    The second: a sharded run resumed without sharding (one process, ddp) failed on its first save,
    torch.save cannot replace a directory (FSDP, the other way round, replaces a file itself)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_global_step_saved = trainer.global_step

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        path = Path(filepath)
        writes_file = not isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy))
        if writes_file and trainer.is_global_zero and path.is_dir():  # rank 0 writes the file
            shutil.rmtree(path)
        super()._save_checkpoint(trainer, filepath)


class _WriteExperiment(Callback):
    """Writes ``experiment.json`` once the ranks are known, from rank 0 only."""

    def __init__(self, exp: ExperimentConfig, path: Path) -> None:
        self.exp, self.path = exp, path

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            self.path.write_text(json.dumps(self.exp.to_dict(), indent=2))


def average_checkpoints(paths: list[Path], keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Element-wise mean of the (trainable) weights of Lightning checkpoints.

    paths: ``.ckpt`` files (loaded with ``weights_only=True``) or sharded checkpoint directories (FSDP,
        DeepSpeed), consolidated on this process (:func:`~llama_avsr.training.distributed.read_trainable_state`).
    keys: the LightningModule names to keep (``None``: all). Integer buffers (e.g. BatchNorm counters)
        come from the last checkpoint.
    """
    if not paths:
        raise ValueError("no checkpoints to average")
    acc: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    for p in paths:
        sd = read_trainable_state(p, keys)
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


def select_checkpoints(
    select: str,
    average_last: int,
    ckpt_dir: Path,
    val_history: list[tuple[int, float]],
    best: ModelCheckpoint | None = None,
) -> tuple[list[Path], dict[str, Any]]:
    """The checkpoints the final model is made of (averaged when several) and a record of the choice.

    select: ``average_last`` (the last ``average_last`` step/epoch checkpoints), ``last``, or
        ``best_val_wer``: the lowest validation WER in ``val_history`` (the first of equal ones) — the
        checkpoint ``best`` saved at that validation, or the step's own checkpoint for the final weights
        (validated after training, when ``best`` no longer saves). Falls back to the last checkpoint, with a warning, when nothing was validated.
    """
    saved = checkpoints_in_order(ckpt_dir)
    if not saved and (ckpt_dir / "last.ckpt").exists():
        saved = [ckpt_dir / "last.ckpt"]
    record: dict[str, Any] = {"select": select}
    if select == "best_val_wer":
        best_path = Path(best.best_model_path) if best is not None and best.best_model_path else None
        if not val_history or best_path is None:
            log.warning("train.select=best_val_wer: no validation WER was measured; using the last weights")
        else:
            step, wer = min(val_history, key=lambda h: h[1])  # the first of equal ones, as `best` keeps
            if not best_path.stem.endswith(f"step={step}"):
                # the best weights were validated outside fit (the final ones): their step checkpoint
                at_step = [p for p in saved if p.stem.endswith(f"step={step}")]
                if at_step:
                    best_path = at_step[-1]
                else:
                    step, wer = int(best_path.stem.split("step=")[-1]), float(best.best_model_score)
            record.update(step=step, val_wer=wer)
            return [best_path], {**record, "checkpoints": [best_path.name]}
        select = "last"
    ckpts = saved[-(average_last if select == "average_last" else 1) :]
    return ckpts, {**record, "checkpoints": [p.name for p in ckpts]}


def _ctc_warmup(module: AVSRLightning, exp: ExperimentConfig, out: Path) -> None:
    """The projector warm-up before the first step (``training/warmup.py``), on this rank's GPU if any."""
    from llama_avsr.training.warmup import ctc_warmup

    t = exp.train
    device = torch.device("cpu")
    if t.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    home = next(module.model.parameters()).device
    module.model.to(device)
    try:
        report = ctc_warmup(module.model, exp)
    finally:
        module.model.to(home)
    if is_global_zero():
        (out / "ctc_warmup.json").write_text(json.dumps(dataclasses.asdict(report), indent=2))


def train(exp: ExperimentConfig, resume: bool = False) -> Path:
    """Fit and write ``<out_dir>/model``. ``resume`` continues from ``checkpoints/last.ckpt``."""
    t = exp.train
    out = Path(t.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(t.seed, workers=True, verbose=False)

    module = AVSRLightning(exp)
    data = AVSRData(exp, module)
    precision = _precision(t.precision)
    strategy = build_strategy(t, module.model, precision)
    # the live model is sharded (FSDP, DeepSpeed): the model directory is written from a plain copy
    sharded = not isinstance(strategy, str)
    ckpt_dir = out / "checkpoints"
    checkpoint = _Checkpoints(
        dirpath=ckpt_dir,
        filename="{epoch}-step={step}",
        save_top_k=-1,
        save_last=True,
        every_n_train_steps=t.checkpoint_every_steps or None,
        save_on_train_epoch_end=True,
        auto_insert_metric_name=False,
        # a resumed run always continues last.ckpt: Lightning would write last-v1.ckpt beside it when
        # the run directory was moved or copied since (it no longer recognises its own last.ckpt), and
        # the next --resume would go back to the stale one
        enable_version_counter=False,
    )
    # the weights of the best validation WER so far (train.select=best_val_wer), kept apart from the
    # step/epoch checkpoints that averaging reads
    best = (
        ModelCheckpoint(
            dirpath=ckpt_dir / "best",
            filename="{epoch}-step={step}",
            monitor="val/wer",
            mode="min",
            save_top_k=1,
            save_last=False,
            save_on_train_epoch_end=False,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        if t.select == "best_val_wer"
        else None
    )
    trainer = L.Trainer(
        default_root_dir=str(out),
        max_epochs=t.epochs if t.max_steps <= 0 else -1,
        max_steps=t.max_steps,
        max_time={"minutes": t.max_minutes} if t.max_minutes else None,
        precision=precision,
        accelerator=t.accelerator,
        strategy=strategy,
        devices=t.devices,
        num_nodes=t.num_nodes,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        logger=_loggers(exp, out) or False,
        callbacks=[
            checkpoint,
            *([best] if best is not None else []),
            TQDMProgressBar(refresh_rate=1),
            _WriteExperiment(exp, out / "experiment.json"),
        ],
        log_every_n_steps=t.log_every_steps,
        # Lightning counts training batches here, not optimiser steps
        val_check_interval=t.val_every_steps * t.accumulate_grad_batches or None,
        check_val_every_n_epoch=None if t.val_every_steps else 1,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the frame-budget sampler shards by rank itself
        enable_model_summary=False,
    )
    ckpt_path = None
    scratch = None
    if resume:
        last = ckpt_dir / "last.ckpt"
        if last.exists():  # a file, or a directory of shards
            ckpt_path = str(last)
            log.info("resuming from %s", last)
            if (last / FSDP_METADATA).is_file() and not isinstance(strategy, TrainableFSDPStrategy):
                # an FSDP run resumed without FSDP (one process, ddp): consolidate its shards
                scratch = Path(tempfile.mkdtemp(prefix="llama-avsr-resume-"))
                ckpt_path = str(scratch / "last.ckpt")
                torch.save(consolidate_checkpoint(last), ckpt_path)
        else:
            log.warning("--resume: no %s yet, starting from scratch", last)
    if ckpt_path is None and t.ctc_warmup:
        _ctc_warmup(module, exp, out)
    start = time.time()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.time() - start
    # a run that stops between checkpoint intervals (max_steps, time budget) still ends with its final
    # weights on disk, so the averaged model includes them (all ranks take part: sharded strategies;
    # rank 0 decides, so that they agree)
    saved = checkpoints_in_order(ckpt_dir)
    final = f"{trainer.current_epoch}-step={trainer.global_step}.ckpt"
    missing = trainer.global_step > 0 and not any(
        p.stem.endswith(f"step={trainer.global_step}") for p in saved
    )
    if trainer.strategy.broadcast(missing, src=0):
        trainer.save_checkpoint(ckpt_dir / final)
    if best is not None and trainer.global_step > 0:
        validated = [step for step, _ in module.val_history]
        if not validated or validated[-1] != trainer.global_step:
            log.info(
                "validating the final weights (step %d) for train.select=best_val_wer", trainer.global_step
            )
            trainer.validate(module, datamodule=data, verbose=False)
    set_rank(trainer.global_rank)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # no collectives from here on
    if trainer.global_rank != 0:
        return out / "model"
    ckpts, selection = select_checkpoints(t.select, t.average_last, ckpt_dir, module.val_history, best)
    state = average_checkpoints(ckpts, set(module.trainable_keys)) if ckpts else None
    log.info("final model (%s): %s", t.select, [p.name for p in ckpts])
    stats = {
        "selection": selection,
        "val_wer": [{"step": step, "wer": wer} for step, wer in module.val_history],
        "train_steps": int(trainer.global_step),
        "train_seconds": round(elapsed, 1),
        "train_utterances": module.utterances_total,
        "train_utterances_per_second": round(module.utterances_total / max(elapsed, 1e-9), 2),
        "world_size": trainer.world_size,
    }
    model = _plain_model(exp, module) if sharded else module.model
    return save_model_dir(model, exp, out / "model", state=state, results={"training": stats})


def _plain_model(exp: ExperimentConfig, module: AVSRLightning) -> AVSRModel:
    """An unwrapped copy of the trained model for saving, when the live one is sharded.

    Rebuilt from the config with the run's seed, so that weights without a source (added-token
    embeddings, random-init parts) are the ones training started from — frozen, so still current; the
    buffers of frozen encoders (running statistics in train mode) are taken from the live model, where
    sharding leaves them whole. The trainable weights come from the checkpoints.
    """
    L.seed_everything(exp.train.seed, workers=True, verbose=False)
    model = AVSRModel(exp.model)
    own = dict(model.named_buffers())
    with torch.no_grad():
        for name, buf in module.model.named_buffers():
            mine = own.get(clean_name(name))
            if mine is not None and mine.shape == buf.shape:
                mine.copy_(buf)
    return model
