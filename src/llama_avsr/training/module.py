"""Lightning wiring: the LightningModule (optimiser, schedule, trainable-only checkpoints, sampler
resume) and the DataModule (frame-budget batches per rank)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
import torch

from llama_avsr.data.collate import Collator
from llama_avsr.data.dataset import build_dataloader, load_split
from llama_avsr.models.avsr import AVSRModel
from llama_avsr.training.config import ExperimentConfig

log = logging.getLogger(__name__)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine to ``min_ratio`` at ``total`` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return cosine((step - warmup) / max(1, total - warmup), min_ratio)


def cosine(progress: float, min_ratio: float) -> float:
    """1 → ``min_ratio`` as progress goes 0 → 1 (clamped)."""
    progress = min(1.0, max(0.0, progress))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class TrainingClock:
    """Seconds spent training (continued across resumes), for the time-based schedule."""

    def __init__(self) -> None:
        self.before = 0.0  # restored from a checkpoint
        self.started: float | None = None

    def seconds(self) -> float:
        if self.started is None:
            self.started = time.monotonic()
        return self.before + time.monotonic() - self.started


def audio_variant(model: AVSRModel) -> str:
    """``raw`` when an encoder reading audio computes its own normalised features (AV-HuBERT)."""
    for s in model.cfg.streams.values():
        if "audio" in s.inputs and model.encoders[s.encoder].raw_audio:
            return "raw"
    return "default"


class AVSRLightning(L.LightningModule):
    def __init__(self, exp: ExperimentConfig, model: AVSRModel | None = None) -> None:
        super().__init__()
        self.exp = exp
        self.model = model if model is not None else AVSRModel(exp.model)
        if exp.train.feature_cache:
            from llama_avsr.models.feature_cache import cache_for_training

            self.model.feature_cache = cache_for_training(
                self.model, exp.train.feature_cache, exp.data.train_augment
            )
        # checkpoints hold only the trainable weights; the frozen ones come from their sources
        self.strict_loading = False
        self.sampler_state: dict[str, int] | None = None
        self.clock = TrainingClock()
        self._epoch_consumed = 0
        #: utterances trained on in this process (throughput report)
        self.utterances_seen = 0

    # -- steps ---------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        self._epoch_consumed += 1
        skipped = getattr(batch, "skipped", None)
        if skipped:
            log.warning("skipped %d unreadable item(s) in this batch: %s", len(skipped), skipped)
        if len(batch) == 0:  # every item unreadable: nothing to learn from (Lightning skips the step)
            return None
        out = self.model(batch)
        bs = len(batch)
        self.utterances_seen += bs
        self.log("train/loss", out.lm_loss, prog_bar=True, batch_size=bs)
        if self.exp.model.sink_loss_factor > 0:
            self.log("train/sink_loss", out.sink_loss, batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=True, batch_size=bs)
        return out.loss

    def validation_step(self, batch, batch_idx: int) -> None:
        if len(batch) == 0:
            return
        out = self.model(batch)
        self.log("val/loss", out.lm_loss, prog_bar=True, sync_dist=True, batch_size=len(batch))

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        t = self.exp.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # biases and norms: no weight decay
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=t.lr,
            betas=tuple(t.betas),
        )
        if t.schedule == "time":
            budget = 60.0 * t.max_minutes
            warm_secs: list[float] = []  # training time at the end of warm-up

            def factor(step: int) -> float:
                if step < t.warmup_steps:
                    return (step + 1) / t.warmup_steps
                if not warm_secs:
                    warm_secs.append(self.clock.seconds())
                used = self.clock.seconds() - warm_secs[0]
                return cosine(used / max(1.0, budget - warm_secs[0]), t.min_lr_ratio)
        else:
            total = t.max_steps if t.max_steps > 0 else int(self.trainer.estimated_stepping_batches)

            def factor(step: int) -> float:
                return warmup_cosine(step, t.warmup_steps, total, t.min_lr_ratio)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints: trainable weights + sampler position ------------------------------------
    def on_train_start(self) -> None:
        self.clock.seconds()  # starts the training clock (time-based schedule)

    def on_train_epoch_start(self) -> None:
        st = self.sampler_state
        self._epoch_consumed = st["consumed"] if st and st["epoch"] == self.current_epoch else 0
        self.sampler_state = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = {f"model.{k}" for k in self.model.trainable_state_dict()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["sampler"] = {"epoch": self.current_epoch, "consumed": self._epoch_consumed}
        checkpoint["train_seconds"] = self.clock.seconds()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.sampler_state = checkpoint.get("sampler")
        self.clock.before = float(checkpoint.get("train_seconds", 0.0))
        own = {f"model.{k}" for k in self.model.trainable_state_dict()}
        saved = set(checkpoint["state_dict"])
        if saved != own:
            missing, extra = sorted(own - saved), sorted(saved - own)
            raise ValueError(
                "checkpoint does not match this configuration: "
                f"missing {missing[:3]} ({len(missing)}), unexpected {extra[:3]} ({len(extra)})"
            )


class AVSRData(L.LightningDataModule):
    """Train / val loaders over the label CSVs; each rank gets its own frame-budget batches."""

    def __init__(self, exp: ExperimentConfig, module: AVSRLightning) -> None:
        super().__init__()
        self.exp = exp
        self.module = module
        model = module.model
        self.modalities = model.cfg.modalities
        self.collator = Collator(model.tokenizer, self.modalities)
        self.variant = audio_variant(model)

    def _loader(self, split: str):
        t = self.trainer
        loader = build_dataloader(
            load_split(self.exp.data, split),
            self.exp.data,
            self.collator,
            split,
            modalities=self.modalities,
            epoch=t.current_epoch if t else 0,
            rank=t.global_rank if t else 0,
            world_size=t.world_size if t else 1,
            audio_variant=self.variant,
        )
        st = self.module.sampler_state
        if split == "train" and st is not None:
            loader.batch_sampler.load_state_dict(st)
        return loader

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        if self.exp.data.val_csv is None:
            return []
        return self._loader("val")
