"""``train``: build the Lightning trainer from an experiment config, fit, average the last checkpoints
and write the final model directory.

Under any strategy only rank 0 writes ``experiment.json``, logs, the averaged model directory and its
results (checkpoint files are written by Lightning: rank 0 alone, or every rank its shard with FSDP /
DeepSpeed). Sharded checkpoints are consolidated here, on rank 0, into the usual model directory: the
trainable weights only, plus the references to the base models in the config.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

from llama_avsr import safe_load
from llama_avsr.data.dataset import load_split
from llama_avsr.devices import resolve_precision
from llama_avsr.errors import UserError
from llama_avsr.io import atomic_write_json, atomic_write_with, exclusive_lock
from llama_avsr.logs import tidy_library_loggers
from llama_avsr.model_dir import init_from_model_dirs, save_model_dir
from llama_avsr.models.avsr import AVSRModel
from llama_avsr.training.config import ExperimentConfig
from llama_avsr.training.distributed import (
    FSDP_METADATA,
    TrainableFSDPStrategy,
    build_strategy,
    clean_name,
    consolidate_checkpoint,
    global_rank,
    is_global_zero,
    read_trainable_state,
    set_rank,
)
from llama_avsr.training.module import AVSRData, AVSRLightning

log = logging.getLogger(__name__)
tidy_library_loggers()  # Lightning's import attached its own handler: one line per record, not two


#: what a training run writes into its folder (``--overwrite`` removes these, and nothing else)
RUN_OUTPUTS: tuple[str, ...] = (
    "checkpoints",
    "logs",
    "model",
    "eval",
    "experiment.json",
    "ctc_warmup.json",
)


class _KeptRowsWriter(ExperimentWriter):
    """Lightning's CSV writer, which deletes an existing ``metrics.csv`` when it starts, made to keep
    its rows instead: a resumed run replaces only the rows from its first logged step on (those the
    interrupted run logged after its checkpoint, logged again now), so the file reads as one run."""

    def _check_log_dir_exists(self) -> None:
        self._merge_pending = Path(self.metrics_file_path).is_file()

    def save(self) -> None:
        if self.metrics and getattr(self, "_merge_pending", False):
            self._merge_pending = False
            self._keep_rows_before(min(int(m["step"]) for m in self.metrics))
        super().save()

    def _keep_rows_before(self, step: int) -> None:
        path = Path(self.metrics_file_path)
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step") not in (None, "") and int(r["step"]) < step]

        def write(f: Any) -> None:
            text = io.TextIOWrapper(f, newline="", encoding="utf-8")
            w = csv.DictWriter(text, fieldnames=header)
            w.writeheader()
            w.writerows(rows)
            text.flush()
            text.detach()

        atomic_write_with(path, write)
        self.metrics_keys = header  # new keys rewrite the header, keeping these rows


class _CSVLogger(CSVLogger):
    """CSV metrics that survive a kill and a resume: written out with every checkpoint, and the rows
    of the interrupted run kept when it resumes (see above)."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeptRowsWriter(self.log_dir)
        return self._experiment

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        # the rows up to a checkpoint reach the disk with it: a run killed later loses none of them
        self.save()


def _loggers(exp: ExperimentConfig, out: Path) -> list[Any]:
    from lightning.pytorch import loggers as pl_loggers

    made: list[Any] = []
    for name in exp.train.loggers:
        if name == "tensorboard":
            made.append(pl_loggers.TensorBoardLogger(out / "logs", name="tensorboard", version=""))
        elif name == "csv":
            made.append(_CSVLogger(out / "logs", name="csv", version=""))
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


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files written atomically (a temporary file beside the target, synced, renamed over
    it: a killed run leaves complete checkpoints only) and read back through ``llama_avsr.safe_load``
    (weights only, whatever Lightning asks for)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_write_with(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
        return safe_load.load(path, mmap=False)


class _WriteExperiment(Callback):
    """Writes ``experiment.json`` (atomically) once the ranks are known, from rank 0 only."""

    def __init__(self, exp: ExperimentConfig, path: Path) -> None:
        self.exp, self.path = exp, path

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            atomic_write_json(self.path, self.exp.to_dict())


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


def checkpoint_step(path: Path) -> int:
    """The global step a checkpoint file holds, read without loading its tensors (memory-mapped).
    Raises :class:`~llama_avsr.safe_load.CheckpointReadError` for a truncated or unreadable file."""
    checkpoint = safe_load.load(path, mmap=True)
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise safe_load.CheckpointReadError(f"{path}: not a training checkpoint (no global_step)")
    return int(checkpoint["global_step"])


def find_resume_checkpoint(ckpt_dir: Path) -> tuple[Path, int] | None:
    """The newest complete checkpoint of a run folder: the highest recorded step among ``last.ckpt``
    and the ``*step=N.ckpt`` files that read back whole (``last.ckpt`` on a tie: it is written last).

    A file that does not read (truncated, corrupt) is skipped with a one-line warning naming it and
    the one used instead. A sharded ``last.ckpt`` directory (FSDP, DeepSpeed) is returned as is, with
    step -1 (its step is known once the strategy loads it). ``None`` when there is nothing to resume.
    """
    last = ckpt_dir / "last.ckpt"
    if last.is_dir():
        return last, -1
    candidates = sorted(
        (p for p in ckpt_dir.glob("*.ckpt") if p.is_file()),
        key=lambda p: (p.name != "last.ckpt", p.name),
    )
    best: tuple[Path, int] | None = None
    broken: list[str] = []
    for p in candidates:
        try:
            step = checkpoint_step(p)
        except safe_load.CheckpointReadError as e:
            broken.append(str(e))
            continue
        if best is None or step > best[1]:
            best = (p, step)
    for reason in broken:
        fallback = f"resuming from {best[0].name} (step {best[1]}) instead" if best else "no other checkpoint"
        log.warning("skipping an unreadable checkpoint: %s; %s", reason, fallback)
    return best


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
        if not val_history:
            log.warning("train.select=best_val_wer: no validation WER was measured; using the last weights")
        else:
            step, wer = min(val_history, key=lambda h: h[1])  # the first of equal ones, as `best` keeps
            chosen = best_path if best_path is not None and best_path.stem.endswith(f"step={step}") else None
            if chosen is None:
                # the best weights were validated outside fit (the final ones, which `best` does not
                # save — the only validation of a run shorter than val_every_steps): their step checkpoint
                at_step = [p for p in saved if p.stem.endswith(f"step={step}")]
                if at_step:
                    chosen = at_step[-1]
                elif best_path is not None:
                    chosen = best_path
                    step, wer = int(best_path.stem.split("step=")[-1]), float(best.best_model_score)
            if chosen is not None:
                record.update(step=step, val_wer=wer)
                return [chosen], {**record, "checkpoints": [chosen.name]}
            log.warning(
                "train.select=best_val_wer: no checkpoint of the best-validated step %d; using the last weights",
                step,
            )
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
        atomic_write_json(out / "ctc_warmup.json", dataclasses.asdict(report))


def prepare_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder; ``overwrite`` clears the previous run's outputs.

    A folder that already holds a run's outputs (:data:`RUN_OUTPUTS`) is refused unless ``resume``
    (continue it) or ``overwrite`` (replace it). ``overwrite`` moves exactly those entries into a hidden
    folder and deletes that: other files in the folder stay, and a crash part-way leaves either the old
    entry or nothing, never a mix.
    """
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: continue the run, or replace it")
    existing = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if not existing:
        return
    if overwrite:
        trash = Path(tempfile.mkdtemp(prefix=".overwritten-", dir=out))
        for name in existing:
            os.replace(out / name, trash / name)
        shutil.rmtree(trash)
        log.warning("--overwrite: removed the previous run in %s (%s)", out, ", ".join(existing))
    elif not resume:
        raise UserError(
            f"{out} already holds a training run ({', '.join(existing)}): pass --resume to continue it "
            "or --overwrite to replace it"
        )


def train(
    exp: ExperimentConfig,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Fit and write ``<out_dir>/model``.

    resume: continue from the newest complete checkpoint in ``<out_dir>/checkpoints`` (logged), with
        the optimiser, schedule, data position and random generators as they were: the run ends as an
        uninterrupted one would. Nothing to resume in a fresh folder: it starts from scratch.
    overwrite: replace a previous run in ``out_dir`` (:func:`prepare_run_folder`); without either flag a
        folder holding a run is refused.
    callbacks: extra Lightning callbacks.

    Rank 0 holds an OS lock on the folder for the whole run: a second ``train`` into it is refused.
    """
    out = Path(exp.train.out_dir)
    if global_rank() != 0:  # launched by rank 0, which checked and locked the folder
        return _train(exp, resume, callbacks)
    with exclusive_lock(out, "a training run"):
        prepare_run_folder(out, resume, overwrite)
        return _train(exp, resume, callbacks)


def _train(exp: ExperimentConfig, resume: bool, callbacks: Sequence[Callback]) -> Path:
    t = exp.train
    out = Path(t.out_dir)
    # label files are checked before anything is written: a wrong path costs no half-made run folder
    load_split(exp.data, "train")
    if exp.data.val_csv:
        load_split(exp.data, "val")
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    found = find_resume_checkpoint(ckpt_dir) if resume else None
    if resume and found is None:  # e.g. killed before its first checkpoint: nothing was saved to continue
        log.warning("--resume: no complete checkpoint in %s yet, starting from scratch", ckpt_dir)
    L.seed_everything(t.seed, workers=True, verbose=False)

    module = AVSRLightning(exp)
    data = AVSRData(exp, module)
    precision = _precision(t.precision)
    strategy = build_strategy(t, module.model, precision)
    # the live model is sharded (FSDP, DeepSpeed): the model directory is written from a plain copy
    sharded = not isinstance(strategy, str)
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
            *callbacks,
        ],
        plugins=[_AtomicCheckpointIO()],
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
    if found is not None:
        last = found[0]
        ckpt_path = str(last)
        step = f" (step {found[1]})" if found[1] >= 0 else ""
        log.warning("resuming from %s%s", last, step)
        if (last / FSDP_METADATA).is_file() and not isinstance(strategy, TrainableFSDPStrategy):
            # an FSDP run resumed without FSDP (one process, ddp): consolidate its shards
            scratch = Path(tempfile.mkdtemp(prefix="llama-avsr-resume-"))
            ckpt_path = str(scratch / "last.ckpt")
            torch.save(consolidate_checkpoint(last), ckpt_path)
    if ckpt_path is None and t.init_from:  # a resumed run has these weights in its checkpoint
        init_from_model_dirs(module.model, t.init_from)
    if ckpt_path is None and t.ctc_warmup:
        _ctc_warmup(module, exp, out)
    start = time.time()
    try:
        # weights only, explicitly (older Lightning has no such argument: the checkpoint IO above is)
        weights_only = (
            {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
        )
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, **weights_only)
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
