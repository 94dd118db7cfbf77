"""Lightning wiring: the LightningModule (loss over the tokens of the global batch, optimiser, schedule,
trainable-only checkpoints, sampler resume) and the DataModule (frame-budget batches per rank).

Distributed semantics (any strategy, any number of processes R, gradient accumulation A):

- each rank reads its own batches of the frame-budget sampler, all ranks the same number of steps;
- one optimiser step covers a *window* of A batches on each of the R ranks; the loss of the step is
  the cross entropy summed over the transcript tokens of all R·A batches divided by their number.
  The token count of the window is known before its first batch runs (the loader reads the window
  ahead, :class:`TokenWindows`) and summed over the ranks with one all-reduce per batch. Each batch
  contributes ``sum_b · R · A / tokens_window``: Lightning divides by A and DDP/FSDP average the
  gradients over R, so the gradient is that of the global token mean, whatever R and A are;
- validation sums the loss and the token count over every rank before dividing, leaving out the
  batches repeated to even out the ranks; so does the validation WER (greedy decoding of the split,
  ``train.val_wer``): word errors and reference words are summed over the ranks, then divided;
- checkpoints record how many batches of the epoch's global list were consumed, so a run resumes on a
  different number of processes (``data.sampler``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from llama_avsr.data.batch import PAD_LABEL, Batch, blank_rows, draw_modality
from llama_avsr.data.collate import Collator
from llama_avsr.data.dataset import build_dataloader, load_split
from llama_avsr.decoding.options import DecodingOptions
from llama_avsr.decoding.search import generate
from llama_avsr.evaluation.metrics import ErrorCounts, word_errors
from llama_avsr.evaluation.run import DECODE_MAX_FRAMES
from llama_avsr.models.avsr import AVSRModel
from llama_avsr.training.config import ExperimentConfig
from llama_avsr.training.distributed import clean_name, trainable_keys
from llama_avsr.training.objective import objective, plan, step_rng

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


def rng_states() -> dict[str, Any]:
    """The global random generators of this process (torch CPU and CUDA, numpy, Python), as tensors and
    plain values so that a weights-only load reads them back. Augmentation and batch order have their
    own generators, derived from (seed, epoch, item) (``data/dataset.py``, ``data/sampler.py``)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured (CUDA states only when the device count matches)."""
    torch.set_rng_state(states["torch"].cpu())
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([c.cpu() for c in cuda])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


class TrainingClock:
    """Seconds spent training (continued across resumes), for the time-based schedule."""

    def __init__(self) -> None:
        self.before = 0.0  # restored from a checkpoint
        self.started: float | None = None

    def seconds(self) -> float:
        if self.started is None:
            self.started = time.monotonic()
        return self.before + time.monotonic() - self.started


def target_tokens(batch: Batch) -> int:
    """Transcript tokens (EOS included) the loss is computed on: the model's ``n_tokens``."""
    if batch.target_ids is None or len(batch) == 0:
        return 0
    return int((batch.target_ids != PAD_LABEL).sum())


class TokenWindows:
    """The training loader as Lightning sees it: yields ``(batch, window_tokens)``.

    ``window_tokens`` is the number of transcript tokens in this rank's batches of the current
    accumulation window (``accumulate`` batches, aligned with Lightning's count of batches in the
    epoch, the last one possibly shorter), read ahead of the first of them.

    loader: the DataLoader over the frame-budget batch sampler (``loader.batch_sampler``).
    before: batches of the current epoch this rank already ran before a resume (Lightning counts on from
        there, so the first window is shortened to stay aligned with its optimiser steps).
    position: the resume point to store in a checkpoint (see ``state_dict``).

    ``sampler`` is the batch sampler, so that Lightning calls its ``set_epoch`` every epoch.
    """

    def __init__(
        self,
        loader: DataLoader,
        accumulate: int,
        before: int = 0,
        position: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.loader = loader
        self.batch_sampler = self.sampler = loader.batch_sampler
        self.accumulate = accumulate
        self.before = before
        self.position = position
        # Lightning treats the epoch as over when its batch count reaches len(): after a resume on a
        # different number of processes its restored count plus the rest can exceed a full epoch
        self._len = max(len(self.batch_sampler.rank_batches()), before + len(self.batch_sampler))

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[tuple[Batch, int]]:
        pos, self.before = self.before, 0
        it = iter(self.loader)
        while True:
            window = list(itertools.islice(it, self.accumulate - pos % self.accumulate))
            if not window:
                return
            tokens = sum(target_tokens(b) for b in window)
            for b in window:
                yield b, tokens
            pos += len(window)

    # Lightning saves the state of loaders that have these (and then trusts them to resume mid-epoch)
    def state_dict(self) -> dict[str, int]:
        return self.position() if self.position is not None else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to do: the resume point comes with the module's checkpoint entry, applied when the
        loader was built."""


class AVSRLightning(L.LightningModule):
    def __init__(self, exp: ExperimentConfig, model: AVSRModel | None = None) -> None:
        super().__init__()
        self.exp = exp
        self.model = model if model is not None else AVSRModel(exp.model)
        if exp.train.feature_cache:
            from llama_avsr.models.feature_cache import cache_for_training

            self.model.feature_cache = cache_for_training(
                self.model, exp.train.feature_cache, exp.data.train_augment, exp.data.augment_variants
            )
        if exp.train.llm_quantization:
            from llama_avsr.training.quantize import quantize_frozen_llm

            quantize_frozen_llm(self.model.llm, exp.train.llm_quantization)
        # checkpoints hold only the trainable weights; the frozen ones come from their sources
        self.strict_loading = False
        self.trainable_keys = trainable_keys(self.model)
        self._matrices = {n for n, p in self.model.named_parameters() if p.requires_grad and p.ndim >= 2}
        self.sampler_state: dict[str, int] | None = None
        self._rng_restore: dict[str, Any] | None = None  # from a checkpoint, applied as training starts
        self.clock = TrainingClock()
        self._rank_steps = 0  # batches this rank ran in the current epoch (Lightning's count)
        self._global_done = 0  # batches of the epoch's global list consumed by all ranks together
        self._counters_epoch = -1  # the epoch these two counters are for
        self._window = torch.zeros(2, dtype=torch.float64)  # summed loss and tokens of the window
        self._val = torch.zeros(4, dtype=torch.float64)  # loss sum, tokens, word errors, reference words
        #: (global step, validation WER) of each validation of this run (for ``train.select``)
        self.val_history: list[tuple[int, float]] = []
        #: utterances trained on in this process / by all processes (throughput report)
        self.utterances_seen = 0
        self.utterances_total = 0

    # -- steps ---------------------------------------------------------------------------------
    def _sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(t, reduce_op="sum") if self.trainer.world_size > 1 else t

    def training_step(self, item: tuple[Batch, int], batch_idx: int) -> torch.Tensor | None:
        batch, window_tokens = item
        self._rank_steps += 1
        self._global_done += self.trainer.world_size
        skipped = getattr(batch, "skipped", None)
        if skipped:
            log.warning("skipped %d unreadable item(s) in this batch: %s", len(skipped), skipped)
        self._curriculum(batch)
        out = self._loss(batch, batch_idx) if len(batch) else None
        if out is not None and int(out.n_tokens) != target_tokens(batch):
            raise RuntimeError(f"loss over {int(out.n_tokens)} tokens, expected {target_tokens(batch)}")
        lm_sum = out.lm_loss_sum.detach() if out is not None else torch.zeros((), device=self.device)
        local = torch.stack(
            [lm_sum.double(), torch.tensor(float(target_tokens(batch)), device=lm_sum.device)]
        )
        stats = self._sum_over_ranks(
            torch.cat([local, torch.tensor([float(window_tokens)], dtype=torch.float64, device=local.device)])
        )
        self._window = self._window.to(stats.device) + stats[:2]
        if self._window_ends(batch_idx):
            loss_sum, tokens = self._window.tolist()
            self._window = torch.zeros_like(self._window)
            bs = len(batch)
            self.log("train/loss", loss_sum / max(tokens, 1.0), prog_bar=True, batch_size=bs)
            self.log("train/tokens", tokens, batch_size=bs)
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=True, batch_size=bs)
        if out is None:
            if self.trainer.world_size == 1:
                return None  # every item unreadable: nothing to learn from (Lightning skips the step)
            # the other ranks reduce gradients in backward: take part with zero gradients
            return sum(p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad)
        self.utterances_seen += len(batch)
        if self.exp.model.sink_loss_factor > 0:
            self.log("train/sink_loss", out.sink_loss, batch_size=len(batch))
        # the token mean over the global window (module docstring); the sink loss is a per-batch mean
        scale = self.trainer.world_size * self.trainer.accumulate_grad_batches / max(float(stats[2]), 1.0)
        return out.lm_loss_sum * scale + out.sink_loss

    def _curriculum_modalities(self) -> list[str]:
        """The modalities blanked in every utterance at this step: ``train.blank_first_steps`` before its
        step, else ``train.blank_batches``' draw for the step (the same on every rank and after a resume)."""
        t = self.exp.train
        first = [m for m, n in (t.blank_first_steps or {}).items() if self.global_step < n]
        if first or not t.blank_batches:
            return first
        drawn = draw_modality(
            t.blank_batches, random.Random(f"blank_batches/{t.seed}/{self.global_step}").random()
        )
        return [drawn] if drawn is not None else []

    def _curriculum(self, batch: Batch) -> None:
        """``train.blank_first_steps`` / ``blank_batches``: blank this step's modality in every utterance
        whose other inputs the dataset left present (in place)."""
        for m in self._curriculum_modalities():
            if m not in batch.inputs:
                continue
            known = batch.blanked or [()] * len(batch)
            blank_rows(batch, m, [i for i in range(len(batch)) if not set(known[i]) - {m}])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """While ``train.blank_first_steps`` / ``blank_batches`` blank a modality, the streams that read it
        are not updated: their gradients come from blank inputs only, and AdamW's normalised steps would
        carry a warmed-up projector far from the LLM's embeddings (measured: clean WER 79 % after 100 such
        steps of 380)."""
        blanked = set(self._curriculum_modalities())
        if not blanked:
            return
        streams = self.model.cfg.streams
        idle = [k for k, st in streams.items() if blanked & set(st.inputs)]
        # an encoder shared with a stream that still reads its input keeps learning
        encoders = {streams[k].encoder for k in idle} - {
            st.encoder for k, st in streams.items() if k not in idle
        }
        modules = [self.model.projectors[k] for k in idle] + [
            self.model.encoders[e] for e in sorted(encoders)
        ]
        for module in modules:
            for p in module.parameters():
                p.grad = None  # AdamW skips a parameter without a gradient (weight decay included)

    def _loss(self, batch: Batch, batch_idx: int, validation: bool = False):
        """The model's loss; for a multi-task / multi-rate model the objective of
        ``training/objective.py`` (validation: every task at every rate combination, no draws)."""
        cfg = self.model.cfg
        if not (cfg.multi_task or cfg.multi_rate):
            return self.model(batch)
        t = self.exp.train
        rng = step_rng(t.seed, self.current_epoch, batch_idx, self.global_rank)
        sampling = ("all", "all") if validation else (t.task_sampling, t.rate_sampling)
        passes = plan(self.model, len(batch), *sampling, t.task_weights, rng)
        return objective(self.model, batch, passes)

    def _window_ends(self, batch_idx: int) -> bool:
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.ready
        last = self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        return done % self.trainer.accumulate_grad_batches == 0 or last

    def on_validation_epoch_start(self) -> None:
        self._val = torch.zeros(4, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if len(batch) == 0:
            return
        out = self._loss(batch, batch_idx, validation=True)
        sampler = getattr(self.trainer.datamodule, "val_sampler", None)
        if sampler is not None and sampler.is_padding(batch_idx):
            return  # a batch repeated to give every rank the same number of steps: counted once
        errors = ErrorCounts()
        if self.exp.train.validation_wer:
            options = DecodingOptions(
                num_beams=self.exp.train.val_beams, max_new_tokens=self.exp.decode.max_new_tokens
            )
            for ref, hyp in zip(batch.texts, generate(self.model, batch, options), strict=True):
                errors = errors + word_errors(ref, hyp)
        self._val += torch.tensor(
            [float(out.lm_loss_sum), float(out.n_tokens), errors.errors, errors.reference_length],
            dtype=torch.float64,
            device=self._val.device,
        )

    def on_validation_epoch_end(self) -> None:
        loss_sum, tokens, errors, words = self._sum_over_ranks(self._val).tolist()
        if tokens > 0:
            self.log("val/loss", loss_sum / tokens, prog_bar=True)
            self.log("val/tokens", tokens)
        if words > 0 and self.exp.train.validation_wer:
            wer = errors / words
            self.log("val/wer", wer, prog_bar=True)
            if not self.trainer.sanity_checking:
                self.val_history.append((int(self.trainer.global_step), wer))

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        t = self.exp.train
        params = {f"model.{clean_name(n)}": p for n, p in self.model.named_parameters() if p.requires_grad}
        decay, no_decay = ([params[n] for n in group] for group in self.optimizer_param_names())
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
            total = t.max_steps if t.max_steps > 0 else self._planned_steps()

            def factor(step: int) -> float:
                return warmup_cosine(step, t.warmup_steps, total, t.min_lr_ratio)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_param_names(self) -> list[list[str]]:
        """LightningModule names of the optimised parameters per group (weight decay: matrices; none:
        biases and norms), in the optimiser's order — decided on the shapes before FSDP flattens them.
        Checkpoints convert optimiser states between strategies with it."""
        names = [clean_name(n) for n, p in self.model.named_parameters() if p.requires_grad]
        return [
            [f"model.{n}" for n in names if n in self._matrices],
            [f"model.{n}" for n in names if n not in self._matrices],
        ]

    def _planned_steps(self) -> int:
        """Optimiser steps of ``train.epochs`` full epochs at this world size (from epoch 0's batches).

        Counted here rather than by Lightning, whose count reads the loader before a resume point is
        restored (sharded strategies) and would shorten the schedule."""
        dm = self.trainer.datamodule
        per_rank = len(dm.epoch_batches()) if dm is not None else int(self.trainer.num_training_batches)
        return self.exp.train.epochs * max(1, math.ceil(per_rank / self.trainer.accumulate_grad_batches))

    # -- checkpoints: trainable weights + sampler position ------------------------------------
    def _restore_position(self) -> None:
        """Counters of the resumed epoch (when the run resumes where it stopped), zero for a new one."""
        st, self.sampler_state = self.sampler_state, None
        if st is not None and st["epoch"] == self.current_epoch:
            world = int(st.get("world_size", self.trainer.world_size))
            self._rank_steps = int(st["consumed"])
            self._global_done = int(st.get("global_consumed", self._rank_steps * world))
        elif self._counters_epoch != self.current_epoch:
            self._rank_steps = self._global_done = 0
        self._counters_epoch = self.current_epoch

    def position(self) -> dict[str, int]:
        """The resume point: epoch, this rank's batches in it, batches of its global list consumed."""
        return {
            "epoch": self.current_epoch,
            "consumed": self._rank_steps,
            "global_consumed": self._global_done,
            "world_size": self.trainer.world_size,
        }

    def on_train_start(self) -> None:
        if self._rng_restore is not None:  # a resumed run draws on as the interrupted one would have
            set_rng_states(self._rng_restore)
            self._rng_restore = None
        self.clock.seconds()  # starts the training clock (time-based schedule)
        self._restore_position()  # a mid-epoch resume gets no on_train_epoch_start

    def on_train_epoch_start(self) -> None:
        self._restore_position()
        self._window = torch.zeros_like(self._window)

    def on_train_end(self) -> None:
        # while the processes can still talk: the run's total for the throughput report
        n = torch.tensor(float(self.utterances_seen), dtype=torch.float64, device=self.device)
        self.utterances_total = int(self._sum_over_ranks(n).item())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "state_dict" in checkpoint:  # absent with DeepSpeed, which saves the weights itself
            checkpoint["state_dict"] = {
                k: v for k, v in checkpoint["state_dict"].items() if k in self.trainable_keys
            }
        checkpoint["sampler"] = self.position()
        checkpoint["train_seconds"] = self.clock.seconds()
        checkpoint["val_history"] = [list(h) for h in self.val_history]
        checkpoint["rng"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.sampler_state = checkpoint.get("sampler")
        self._rng_restore = checkpoint.get("rng")
        self.clock.before = float(checkpoint.get("train_seconds", 0.0))
        self.val_history = [(int(step), float(wer)) for step, wer in checkpoint.get("val_history", [])]
        if "state_dict" not in checkpoint:  # sharded checkpoints: the strategy loads the weights
            return
        saved = set(checkpoint["state_dict"])
        if saved != self.trainable_keys:
            missing, extra = sorted(self.trainable_keys - saved), sorted(saved - self.trainable_keys)
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
        self.val_sampler = None

    def _loader(self, split: str, epoch: int | None = None) -> DataLoader:
        t = self.trainer
        data = self.exp.data
        if split != "train":
            # validation decodes: batches of decode.batch_size utterances of similar length, as
            # `llama-avsr eval` makes them (no gradients are kept, so the training frame budget does not
            # apply); batches of a handful of utterances make greedy decoding several times slower
            data = dataclasses.replace(
                data, max_batch_size=self.exp.decode.batch_size, max_frames=DECODE_MAX_FRAMES
            )
        return build_dataloader(
            load_split(data, split),
            data,
            self.collator,
            split,
            modalities=self.modalities,
            epoch=(t.current_epoch if t else 0) if epoch is None else epoch,
            rank=t.global_rank if t else 0,
            world_size=t.world_size if t else 1,
        )

    def epoch_batches(self) -> list[list[int]]:
        """This rank's training batches of epoch 0 (for planning the schedule)."""
        return self._loader("train", epoch=0).batch_sampler.rank_batches()

    def train_dataloader(self) -> TokenWindows:
        loader = self._loader("train")
        st = self.module.sampler_state
        before = 0
        if st is not None:
            loader.batch_sampler.load_state_dict(st)
            if st["epoch"] == loader.batch_sampler.epoch:
                before = int(st["consumed"])
        t = self.trainer
        return TokenWindows(
            loader,
            t.accumulate_grad_batches if t else 1,
            before=before,
            position=self.module.position if t else None,
        )

    def val_dataloader(self):
        if self.exp.data.val_csv is None:
            return []
        loader = self._loader("val")
        self.val_sampler = loader.batch_sampler
        return loader
