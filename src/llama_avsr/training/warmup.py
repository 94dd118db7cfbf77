"""CTC warm-up of stream projectors (``train.ctc_warmup_epochs``; off in the paper recipes) — and of
encoders trained from scratch, when asked.

The paper trains the projectors from random initialisation, end to end, through the LLM. At paper scale
that costs nothing noticeable, but on a CPU the first few hundred optimiser steps (minutes each hundred)
go to the LLM learning the corpus' language while it still ignores the random projector tokens. Here,
before any LLM step, each chosen projector learns with a CTC loss to put its tokens next to the LLM's
own input embeddings of the tokens being spoken::

    logits_t = s · [b_blank; ê_v]ᵀ · ĥ_t,   ĥ_t = projector(features_t) / ‖·‖,  ê_v = E_v / ‖E_v‖
    (v over the tokens of the training transcripts; s and b_blank learnt, then discarded)

after which the projector's last layer is scaled so that its outputs have the embeddings' mean norm.
The LLM then starts from a sequence that already "reads" like noisy text, and the end-to-end training
(projector + LoRA, the paper's loss) starts from there. It needs no LLM forward pass: the frozen encoder
runs once per utterance (its features go into the model's feature cache when one is set, where training
reuses them) and each epoch is a few small matmuls per utterance — seconds on a CPU.

A stream whose encoder trains (the demo's from-scratch AV-HuBERT, where no pretrained weights ship) can be
warmed up too, when named in ``train.ctc_warmup_streams``: then encoder and projector learn together with the
same CTC loss, batch by batch from the training loader (augmentation included), as a stand-in for the
self-supervised pre-training the paper's encoders bring. It costs an encoder forward and backward per
utterance and epoch but no LLM pass (about a third of a training step on a CPU), and CTC gives the encoder
a direct per-frame signal instead of one through the frozen LLM.

With ``train.warmup_teachers`` (``{video: audio}``) that encoder-rate warm-up also distils: a second temporary
linear head on the student encoder's frames regresses the teacher stream's frozen encoder features (the
audio encoder's, resampled to the video's 25 Hz, each dimension standardised with the statistics of the
batches seen so far), with mean squared error. These are the audio-derived frame targets that AV-HuBERT's
pre-training starts from (its first iteration predicts clusters of audio features from the lips); they
need no transcript alignment and give every frame a target, where CTC from scratch first learns to
predict blanks everywhere. The teacher's features come from the model's feature cache when one is set
(the same clean-audio features training then reuses).

With ``train.warmup_token_teachers`` (``{video: audio}``) the projector fitted after that warm-up also learns,
besides CTC, to point each of its tokens where the teacher stream's warmed-up projector puts the token of
the same instant (cosine distance; the audio stream at stack 10 and the video at stack 5 both give 5
tokens a second). A CTC loss at ~1.6 tokens per transcript token barely trains a projector from scratch;
the teacher's tokens give every video token a dense target in the LLM's input space, so the LLM meets
video tokens that read like the audio tokens it learns from. How close they get is bounded by what the lip
encoder reads: on the demo's from-scratch encoder the cosine distance fell only from 0.76 to 0.69 and the
LLM still ignored the video (docs/results.md, issue 14's fourth round).

Deterministic for a seed; under data parallelism every rank computes the same warm-up (same data, same
order), so the replicas stay identical. Resumed runs skip it (the checkpoint holds the trained weights).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from llama_avsr.data.batch import PAD_LABEL
from llama_avsr.data.collate import Collator
from llama_avsr.data.dataset import build_dataloader, load_split
from llama_avsr.devices import resolve_precision
from llama_avsr.evaluation.metrics import ErrorCounts, align_counts
from llama_avsr.models.avsr import AVSRModel
from llama_avsr.models.encoders.base import build_encoder
from llama_avsr.models.feature_cache import MEMORY, FeatureCache

log = logging.getLogger(__name__)


@dataclass
class WarmupReport:
    """What the warm-up did: per stream the CTC loss of the first and last epoch and the greedy token
    error rate at the end, on (up to 200) training utterances and on the validation utterances
    (``data.val_csv``; empty when it is not set): far apart, the stream memorises the training
    sentences rather than reading them."""

    streams: list[str]
    utterances: int
    skipped: int
    epochs: dict[str, float]
    seconds: float
    first_loss: dict[str, float] = field(default_factory=dict)
    last_loss: dict[str, float] = field(default_factory=dict)
    token_error_rate: dict[str, float] = field(default_factory=dict)
    val_token_error_rate: dict[str, float] = field(default_factory=dict)


def warmup_streams(model: AVSRModel, names: list[str] | None) -> list[str]:
    """The streams to warm up: ``names``, or every stream whose encoder has no trainable parameter."""
    streams = model.cfg.streams
    if names is not None:
        unknown = set(names) - set(streams)
        if unknown:
            raise ValueError(
                f"train.ctc_warmup_streams: unknown streams {sorted(unknown)}; have {list(streams)}"
            )
        return list(names)
    return [
        n
        for n, s in streams.items()
        if not any(p.requires_grad for p in model.encoders[s.encoder].parameters())
    ]


def _data(exp: Any, mods: list[str] | tuple[str, ...] = ()) -> Any:
    """The data config for the warm-up: every input present (CTC cannot transcribe a blanked stream) and
    clean, so without modality dropout, evaluation blanking and evaluation noise. A loader of ``mods``
    with video, when decoded videos are cached (``data.video_cache_mb``) and DataLoader workers are
    forked, loads in this process: the frames it decodes stay in the process's cache for the warm-up's
    later passes and for the training loader's workers, forked afterwards and inheriting it
    (``data.dataset.DecodedVideos``), so each training video is decoded once per run, not per loader.
    (Spawned workers start with an empty cache: there the warm-up keeps its workers.)"""
    here = {"num_workers": 0} if exp.data.video_cache_mb and "video" in mods and _workers_fork() else {}
    return dataclasses.replace(
        exp.data, modality_dropout={}, blank_modalities=[], decode_snr_target=None, **here
    )


def _workers_fork() -> bool:
    """Whether DataLoader workers start by fork (and so inherit this process's memory)."""
    import torch.multiprocessing as mp

    # the method set for this process, else the platform's default (the first of get_all_start_methods)
    return (mp.get_start_method(allow_none=True) or mp.get_all_start_methods()[0]) == "fork"


def _targets(row: torch.Tensor, eos: int) -> torch.Tensor:
    ids = row[row != PAD_LABEL]
    return ids[:-1] if len(ids) and int(ids[-1]) == eos else ids


@torch.no_grad()
def _collect(
    model: AVSRModel,
    exp: Any,
    streams: list[str],
    rates: dict[str, int] | None = None,
    ids: list[str] | None = None,
    split: str = "train",
) -> tuple[dict[str, list[torch.Tensor]], list[torch.Tensor]]:
    """Compressed encoder features per stream (at ``rates``, default each stream's ``ratio``) and
    transcript token ids, per utterance of ``split`` (clean inputs: the evaluation transforms); the
    utterances' ids are appended to ``ids`` when given."""
    rates = rates or {}

    if not streams:  # only the transcripts' tokens are needed (tokenised as the collator does)
        texts = [u.text for u in load_split(_data(exp), split)]
        ids = model.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return {}, [torch.tensor(i, dtype=torch.long) for i in ids]
    mods = sorted({m for n in streams for m in model.cfg.streams[n].inputs})
    collator = Collator(model.tokenizer, mods)
    loader = build_dataloader(
        load_split(_data(exp), split),
        _data(exp, mods),
        collator,
        "val",  # no augmentation, no shuffling
        modalities=mods,
    )
    feats: dict[str, list[torch.Tensor]] = {n: [] for n in streams}
    targets: list[torch.Tensor] = []
    eos = collator.eos_id
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc="CTC warm-up: features", unit="batch", leave=False):
            if not len(batch):
                continue
            batch = batch.to(model.device)
            for n in streams:
                f, lens = model.stream_features(n, batch, rates.get(n))
                feats[n].extend(f[i, : int(lens[i])].float().cpu() for i in range(len(batch)))
            targets.extend(_targets(batch.target_ids[i], eos).cpu() for i in range(len(batch)))
            if ids is not None:
                ids.extend(batch.ids)
    finally:
        model.train(was_training)
    return feats, targets


def _ctc_logits(
    proj: nn.Module, x: torch.Tensor, blank: torch.Tensor, unit: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Features (…, T, D) → CTC logits (…, T, 1 + V): scale · cosine of the projector output with the
    blank vector and the unit-norm token embeddings ``unit`` (V, H)."""
    ref = next(proj.parameters())
    h = F.normalize(proj(x.to(ref.device, ref.dtype)).float(), dim=-1)
    return scale * torch.cat([h @ blank[:, None], h @ unit.T], dim=-1)


def _greedy(logits: torch.Tensor) -> list[int]:
    """Best path of one utterance's (T, C) CTC logits, repeats merged and blanks (0) dropped."""
    best = logits.argmax(-1).tolist()
    out, prev = [], 0
    for b in best:
        if b != prev and b != 0:
            out.append(b)
        prev = b
    return out


def _encoder_trains(model: AVSRModel, name: str) -> bool:
    return any(p.requires_grad for p in model.encoders[model.cfg.streams[name].encoder].parameters())


def ctc_warmup(model: AVSRModel, exp: Any) -> WarmupReport:
    """Fit the chosen projectors (and trainable encoders) with CTC against the LLM's input embeddings
    (module docstring)."""
    t = exp.train
    # streams initialised from a trained model (train.init_from) are not warmed up; a warning when the
    # config names them
    started = set(t.init_from or {})
    chosen = warmup_streams(model, t.ctc_warmup_streams)
    skipped = [n for n in chosen if n in started and stream_epochs(t, n) > 0]
    if skipped and t.ctc_warmup_streams is not None:
        log.warning(
            "CTC warm-up: %s start from trained models (train.init_from): not warmed up", ", ".join(skipped)
        )
    streams = [n for n in chosen if n not in started]
    if not streams and t.init_from:
        log.info("CTC warm-up: every stream starts from a trained model (train.init_from); skipped")
        return WarmupReport([], 0, 0, {}, 0.0)
    if not streams:
        log.warning("CTC warm-up: no stream with a frozen encoder (set train.ctc_warmup_streams); skipped")
        return WarmupReport([], 0, 0, {}, 0.0)
    streams = [n for n in streams if stream_epochs(t, n) > 0]
    start = time.time()
    frozen = [n for n in streams if not _encoder_trains(model, n)]
    trained = [n for n in streams if _encoder_trains(model, n)]
    feats, targets = _collect(model, exp, frozen)
    # utterances whose transcript is longer than some stream's token sequence cannot be aligned by CTC
    keep = [
        i for i, y in enumerate(targets) if len(y) > 0 and all(len(y) <= len(feats[n][i]) for n in frozen)
    ]
    skipped = len(targets) - len(keep)
    if skipped and frozen:
        log.warning("CTC warm-up: %d utterance(s) have more tokens than features; left out", skipped)
    if not keep:
        raise ValueError("CTC warm-up: no training utterance has at least as many features as tokens")
    # the output classes: blank (0) + every token of the training transcripts
    # (of all of them: a stream trained batch by batch also sees the utterances left out above)
    vocab = torch.unique(torch.cat([y for y in targets if len(y)]))
    index = torch.zeros(int(vocab.max()) + 1, dtype=torch.long)
    index[vocab] = torch.arange(1, len(vocab) + 1)
    emb = model.llm.get_input_embeddings().weight.detach()[vocab.to(model.device)].float()

    # the LLM's inputs have this norm: projector outputs are trained at it and end there
    radius = float(emb.norm(dim=-1).mean())
    unit = F.normalize(emb, dim=-1)
    gen = torch.Generator().manual_seed(t.seed)
    report = WarmupReport(streams, len(keep), skipped, {n: stream_epochs(t, n) for n in streams}, 0.0)
    val = _val_features(model, exp, frozen) if frozen else None
    for name in frozen:
        v = (val[0][name], val[1]) if val is not None else None
        _fit_projector(model, t, name, feats[name], targets, keep, index, unit, radius, gen, report, val=v)
    for name in trained:
        if t.ctc_warmup_rate == "encoder":
            aligner = _Aligner.build(model, exp, name, index, gen, report)
            _warm_trained_stream(
                model, exp, name, index, unit, radius, report, encoder_rate=True, aligner=aligner
            )
            # then the projector, on the warmed-up encoder's (clean, eval-mode) features
            teacher = _token_teacher(model, t, name)
            ids: list[str] = []
            f, y = _collect(model, exp, [name] + ([teacher] if teacher else []), ids=ids)
            ok = [i for i, v in enumerate(y) if 0 < len(v) <= len(f[name][i])]
            epochs = t.ctc_warmup_epochs or stream_epochs(t, name)
            tokens = _teacher_tokens(model, teacher, name, f[teacher], f[name]) if teacher else None
            labels = None
            if aligner is not None:
                ratio = model.cfg.streams[name].compression.ratio
                labels = [aligner.token_labels(i, len(v), ratio) for i, v in zip(ids, f[name], strict=True)]
            _fit_projector(
                model,
                t,
                name,
                f[name],
                y,
                ok,
                index,
                unit,
                radius,
                gen,
                report,
                epochs,
                teacher_tokens=tokens,
                aligned=labels,
                val=_stream_val(model, exp, name),
            )
        else:
            _warm_trained_stream(model, exp, name, index, unit, radius, report)
    # Matryoshka streams: the projector of every other rate, on the (warmed-up) encoder's features
    for name in streams:
        scfg = model.cfg.streams[name]
        for k in scfg.compression.rates:
            if k == scfg.compression.ratio:
                continue
            f, y = _collect(model, exp, [name], {name: k})
            ok = [i for i, v in enumerate(y) if 0 < len(v) <= len(f[name][i])]
            if not ok:
                log.warning(
                    "CTC warm-up: no utterance has as many %s features as tokens at rate %d; skipped", name, k
                )
                continue
            epochs = (
                stream_epochs(t, name) if name in frozen else (t.ctc_warmup_epochs or stream_epochs(t, name))
            )
            v = _stream_val(model, exp, name, {name: k})
            _fit_projector(
                model, t, name, f[name], y, ok, index, unit, radius, gen, report, epochs, rate=k, val=v
            )
    report.seconds = time.time() - start
    return report


def _fit_projector(
    model: AVSRModel,
    t: Any,
    name: str,
    feats: list[torch.Tensor],
    targets: list[torch.Tensor],
    keep: list[int],
    index: torch.Tensor,
    unit: torch.Tensor,
    radius: float,
    gen: torch.Generator,
    report: WarmupReport,
    epochs: float | None = None,
    rate: int | None = None,
    teacher_tokens: list[torch.Tensor] | None = None,
    aligned: list[torch.Tensor] | None = None,
    val: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
) -> None:
    """Fit stream ``name``'s projector (at compression ``rate``; default: its ``ratio``) alone on fixed
    features (``keep`` selects the utterances), then scale it to the embeddings' norm and report (under
    ``<name>@x<rate>`` for a rate other than the default). ``teacher_tokens``: per utterance, the tokens
    (one per feature frame) each output should point to besides the CTC loss (``train.warmup_token_teachers``;
    cosine distance, weighted by ``train.warmup_token_teacher_weight``, reported under ``<name>.tokens``).
    ``aligned``: per utterance, the class of each output frame from :class:`_Aligner` (0: no token; -1:
    none known): cross-entropy of the CTC logits on them besides CTC (``train.warmup_aligner_weight``,
    reported under ``<name>.aligned``). ``val``: validation features and transcripts, for the token error
    rate on them."""
    bs = t.ctc_warmup_batch_size
    per_epoch = math.ceil(len(keep) / bs)
    total = max(1, round((stream_epochs(t, name) if epochs is None else epochs) * per_epoch))
    proj = model.projector(name, rate)
    label = name if rate is None else f"{name}@x{rate}"
    desc = f"CTC warm-up: {label} projector" + (" (+ token teacher)" if teacher_tokens is not None else "")
    desc += " (+ aligned tokens)" if aligned is not None else ""
    fit = _Fit(proj.parameters(), unit, t.ctc_warmup_lr, total, desc)
    weight = float(t.warmup_token_teacher_weight)
    a_weight = float(t.warmup_aligner_weight)
    while not fit.done:
        order = [keep[int(j)] for j in torch.randperm(len(keep), generator=gen)]
        for k in range(0, len(order), bs):
            if fit.done:
                break
            idx = order[k : k + bs]
            x = nn.utils.rnn.pad_sequence([feats[i] for i in idx], batch_first=True)
            x_len = torch.tensor([len(feats[i]) for i in idx])
            extra, logits = {}, None
            if teacher_tokens is not None:
                extra["teacher"] = weight * _token_distance(proj, x, [teacher_tokens[i] for i in idx])
            if aligned is not None:
                logits = fit.logits(proj, x).float()
                extra["aligned"] = a_weight * _frame_ce(logits, [aligned[i] for i in idx])
            fit.step(proj, x, x_len, [index[targets[i]] for i in idx], extra, logits)
    _match_norm(proj, feats, keep, radius)
    if fit.report_extra(report, f"{label}.aligned", "aligned", per_epoch, a_weight):
        log.info(
            "Aligned tokens of the %s projector: cross-entropy %.3f → %.3f",
            label,
            report.first_loss[f"{label}.aligned"],
            report.last_loss[f"{label}.aligned"],
        )
    if fit.report_extra(report, f"{label}.tokens", "teacher", per_epoch, weight):
        key = f"{label}.tokens"
        log.info(
            "Token distillation of the %s projector: cosine distance to the teacher's tokens %.3f → %.3f "
            "(1 = unrelated)",
            label,
            report.first_loss[key],
            report.last_loss[key],
        )
    fit.finish(label, "projector", per_epoch, proj, feats, targets, keep, index, report, val)


def _token_teacher(model: AVSRModel, t: Any, name: str) -> str | None:
    """The stream whose projected tokens stream ``name``'s projector learns to point to (``None``: none;
    checked by :func:`_check_teacher`: its projector, on a frozen encoder, was fitted first)."""
    teacher = (t.warmup_token_teachers or {}).get(name)
    if teacher is None or not t.warmup_token_teacher_weight:
        return None
    _check_teacher(model, "warmup_token_teachers", name, teacher)
    return teacher


def _check_teacher(model: AVSRModel, key: str, student: str, teacher: str) -> None:
    """``train.<key>`` maps ``student`` to ``teacher``: another stream of the model, with a frozen encoder."""
    if teacher not in model.cfg.streams or teacher == student:
        raise ValueError(
            f"train.{key}: {student!r} → {teacher!r}: the teacher must be another stream of the model "
            f"({list(model.cfg.streams)})"
        )
    if _encoder_trains(model, teacher):
        raise ValueError(f"train.{key}: the teacher stream {teacher!r} needs a frozen encoder")


@torch.no_grad()
def _teacher_tokens(
    model: AVSRModel,
    teacher: str,
    student: str,
    teacher_feats: list[torch.Tensor],
    student_feats: list[torch.Tensor],
) -> list[torch.Tensor]:
    """Per utterance, the teacher stream's projected tokens resampled in time to the student's token
    count (area interpolation over the span both cover; student tokens past the teacher's end get none:
    rows of zeros, which :func:`_token_distance` leaves out)."""

    def token_rate(n: str) -> float:
        s = model.cfg.streams[n]
        return float(model.encoders[s.encoder].frame_rate) / s.compression.ratio

    ratio = token_rate(teacher) / token_rate(student)  # teacher tokens per student token
    proj = model.projector(teacher)
    ref = next(proj.parameters())
    out = []
    for tf, sf in zip(teacher_feats, student_feats, strict=True):
        tok = proj(tf.to(ref.device, ref.dtype)).float().cpu()
        target = torch.zeros(len(sf), tok.shape[-1])
        _area_resample(tok, ratio, len(sf), target)
        out.append(target)
    return out


def _area_resample(seq: torch.Tensor, ratio: float, n_out: int, out: torch.Tensor) -> int:
    """Write into ``out[:frames]`` the (T, D) sequence ``seq`` averaged over each output step's span of
    ``ratio`` input steps, for the ``frames`` (returned, at most ``n_out``) output steps ``seq`` covers."""
    frames = min(n_out, int(len(seq) / ratio))
    if frames >= 1:
        span = min(len(seq), max(1, round(frames * ratio)))
        out[:frames] = F.interpolate(seq[:span].T[None], size=frames, mode="area")[0].T
    return frames


def _token_distance(proj: nn.Module, x: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
    """Mean cosine distance between the projector's outputs for ``x`` (B, T, D) and the ``targets`` (one
    (T_i, H) tensor per utterance; all-zero rows and padding are left out)."""
    ref = next(proj.parameters())
    h = proj(x.to(ref.device, ref.dtype)).float()
    tgt = nn.utils.rnn.pad_sequence(targets, batch_first=True).to(h.device)
    tgt = F.pad(tgt, (0, 0, 0, h.shape[1] - tgt.shape[1]))
    mask = (tgt.abs().sum(-1) > 0).float()
    dist = 1.0 - F.cosine_similarity(h, tgt, dim=-1, eps=1e-8)
    return (dist * mask).sum() / mask.sum().clamp(min=1)


class _Fit:
    """One stream's CTC fit: the learnt blank vector and logit scale (discarded afterwards), AdamW with a
    linear decay to 0 over ``total`` steps, the losses and a progress bar."""

    def __init__(
        self,
        params: Any,
        unit: torch.Tensor,
        lr: float,
        total: int,
        desc: str,
        head: nn.Module | None = None,
        extra_params: list[nn.Parameter] | None = None,
    ) -> None:
        self.unit = unit
        self.head = head  # a free linear head (encoder-rate warm-up) instead of the cosine logits
        self.blank = nn.Parameter(torch.zeros(unit.shape[1], device=unit.device))
        self.scale = nn.Parameter(torch.full((), 10.0, device=unit.device))  # logits: scale · cosine
        trained = [p for p in params if p.requires_grad] + ([*head.parameters()] if head is not None else [])
        trained += extra_params or []
        self.opt = torch.optim.AdamW([*trained, self.blank, self.scale], lr=lr, weight_decay=0.0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0 - s / total)
        self.total = total
        self.losses: list[float] = []
        self.extra_losses: dict[str, list[float]] = {}
        self.bar = tqdm(total=total, desc=desc, unit="step")

    def logits(self, proj: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """CTC logits (…, T, 1 + V) of features ``x`` (…, T, D)."""
        if self.head is not None:
            ref = next(self.head.parameters())
            return self.head(x.to(ref.device, ref.dtype))
        return _ctc_logits(proj, x, self.blank, self.unit, self.scale)

    @property
    def done(self) -> bool:
        return len(self.losses) >= self.total

    def step(
        self,
        proj: nn.Module,
        x: torch.Tensor,
        x_len: torch.Tensor,
        ys: list[torch.Tensor],
        extra: dict[str, torch.Tensor] | None = None,
        logits: torch.Tensor | None = None,
    ) -> None:
        """One update on features ``x`` (B, T, D) of lengths ``x_len`` and class targets ``ys``; ``extra``:
        further (weighted) losses added to the CTC loss, by name (their values are kept in
        ``extra_losses[name]``); ``logits``: :meth:`logits` of ``x`` when the caller computed them already."""
        logits = self.logits(proj, x) if logits is None else logits
        lp = logits.float().log_softmax(-1).transpose(0, 1)
        y = torch.cat(ys).to(lp.device)
        y_len = torch.tensor([len(v) for v in ys])
        loss = F.ctc_loss(lp, y, x_len, y_len, blank=0, zero_infinity=True)  # lp: (T, B, C)
        extra = extra or {}
        total = loss + sum(extra.values()) if extra else loss
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        self.sched.step()
        self.losses.append(float(loss.detach()))
        self.bar.update(1)
        for k, v in extra.items():
            self.extra_losses.setdefault(k, []).append(float(v.detach()))
        self.bar.set_postfix(
            loss=f"{self.losses[-1]:.3f}", **{k: f"{v[-1]:.3f}" for k, v in self.extra_losses.items()}
        )

    def report_extra(self, report: WarmupReport, key: str, loss: str, per_epoch: int, weight: float) -> bool:
        """The added loss ``loss`` of the first and last epoch, unweighted, into ``report`` under ``key``
        (``False``: that loss was never added)."""
        values = self.extra_losses.get(loss)
        if not values:
            return False
        n = min(per_epoch, len(values)) or 1
        report.first_loss[key] = sum(values[:n]) / n / max(weight, 1e-12)
        report.last_loss[key] = sum(values[-n:]) / n / max(weight, 1e-12)
        return True

    def finish(
        self,
        name: str,
        what: str,
        per_epoch: int,
        proj: nn.Module,
        feats: list[torch.Tensor],
        targets: list[torch.Tensor],
        keep: list[int],
        index: torch.Tensor,
        report: WarmupReport,
        val: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> None:
        """Losses of the first and last epoch and the greedy token error rate into ``report``, on the
        training utterances ``keep`` and on ``val`` (features, transcripts) when given; log them."""
        self.bar.close()
        n = min(per_epoch, len(self.losses)) or 1
        report.first_loss[name] = sum(self.losses[:n]) / n
        report.last_loss[name] = sum(self.losses[-n:]) / n
        with torch.no_grad():
            report.token_error_rate[name] = _token_error_rate(
                lambda x: self.logits(proj, x), feats, targets, keep, index
            )
            on_val = ""
            if val is not None:
                vf, vy = val
                ok = [i for i, y in enumerate(vy) if len(y)]
                if ok:
                    report.val_token_error_rate[name] = _token_error_rate(
                        lambda x: self.logits(proj, x), vf, vy, ok, index
                    )
                    on_val = f", {100 * report.val_token_error_rate[name]:.1f} % on validation utterances"
        log.info(
            "CTC warm-up of the %s %s: %d steps, loss %.3f → %.3f, greedy token error rate %.1f %% "
            "(training utterances)%s",
            name,
            what,
            self.total,
            report.first_loss[name],
            report.last_loss[name],
            100 * report.token_error_rate[name],
            on_val,
        )


class _Teacher:
    """Cross-modal distillation targets for a student encoder (module docstring): the frozen encoder
    features of stream ``teacher``, resampled to the student's frame rate by averaging over each student
    frame's time span and standardised per dimension with running statistics; a linear head maps the
    student's features onto them. :meth:`loss` is the mean squared error over the valid frames (1.0 for a
    head that predicts the mean, 0 for a perfect one)."""

    def __init__(self, model: AVSRModel, teacher: str, student_dim: int, student_rate: float) -> None:
        t_enc = model.encoders[model.cfg.streams[teacher].encoder]
        self.model, self.name = model, teacher
        self.ratio = float(t_enc.frame_rate) / float(student_rate)  # teacher frames per student frame
        dim = int(t_enc.output_dim)
        ref = next(model.parameters())
        self.head = nn.Linear(student_dim, dim).to(ref.device)
        self.count = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.sumsq = torch.zeros(dim, dtype=torch.float64)

    def targets(self, batch: Any, student_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_student, D_teacher) targets and a (B, T_student) mask of the frames that have one."""
        with torch.no_grad():
            feats, lens = self.model.encoder_features(self.name, batch)
        feats = feats.float()
        b, t = len(student_lens), int(student_lens.max())
        out = feats.new_zeros(b, t, feats.shape[-1])
        mask = feats.new_zeros(b, t)
        for i in range(b):  # the student frames that the teacher's frames cover
            frames = _area_resample(feats[i, : int(lens[i])], self.ratio, int(student_lens[i]), out[i])
            mask[i, :frames] = 1
        valid = out[mask.bool()].double().cpu()
        self.count += len(valid)
        self.sum += valid.sum(0)
        self.sumsq += valid.square().sum(0)
        mean = self.sum / max(self.count, 1)
        std = (self.sumsq / max(self.count, 1) - mean.square()).clamp(min=1e-8).sqrt()
        out = (out - mean.to(out)) / std.to(out) * mask[..., None]
        return out, mask

    def loss(self, student: torch.Tensor, batch: Any, student_lens: torch.Tensor) -> torch.Tensor:
        target, mask = self.targets(batch, student_lens)
        pred = self.head(student.float())
        err = (pred - target).square().mean(-1) * mask
        return err.sum() / mask.sum().clamp(min=1)


_NO_LABELS = torch.zeros(0, dtype=torch.long)


def _frame_ce(logits: torch.Tensor, labels: list[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of (B, T, C) ``logits`` against per-utterance frame classes (shorter sequences and
    classes < 0 are left out; 0 when no frame has a class)."""
    target = torch.full(logits.shape[:2], -100, dtype=torch.long)
    for i, lab in enumerate(labels):
        k = min(len(lab), logits.shape[1])
        target[i, :k] = lab[:k]
    target[target < 0] = -100
    if not (target >= 0).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.flatten(0, 1), target.to(logits.device).flatten(), ignore_index=-100)


def fit_ctc_head(
    feats: list[torch.Tensor],
    ys: list[torch.Tensor],
    n_classes: int,
    gen: torch.Generator,
    epochs: int = 24,
    lr: float = 3e-3,
    batch_size: int = 16,
) -> nn.Linear:
    """A linear CTC head (class 0 = blank) fitted on fixed features ``feats`` (each (T_i, D)) to the class
    sequences ``ys``, with Adam; utterances with more classes than frames are left out. Initialisation
    and order come from ``gen``: the same inputs give the same head."""
    fit = [i for i, y in enumerate(ys) if 0 < len(y) <= len(feats[i])]
    head = nn.Linear(feats[0].shape[-1], n_classes)
    with torch.no_grad():
        bound = 1.0 / math.sqrt(feats[0].shape[-1])
        head.weight.copy_(torch.rand(head.weight.shape, generator=gen) * 2 * bound - bound)
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(epochs):
        order = [fit[int(j)] for j in torch.randperm(len(fit), generator=gen)]
        for k in range(0, len(order), batch_size):
            b = order[k : k + batch_size]
            lp = head(nn.utils.rnn.pad_sequence([feats[i] for i in b], batch_first=True))
            loss = F.ctc_loss(
                lp.log_softmax(-1).transpose(0, 1),
                torch.cat([ys[i] for i in b]),
                torch.tensor([len(feats[i]) for i in b]),
                torch.tensor([len(ys[i]) for i in b]),
                zero_infinity=True,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head


def ctc_align(log_probs: torch.Tensor, labels: list[int]) -> list[int]:
    """Viterbi CTC forced alignment of ``labels`` (class ids, blank = 0) to (T, C) ``log_probs``: the frame
    of each label's first emission on the best path (``[]`` when the labels do not fit in T frames)."""
    t_len = log_probs.shape[0]
    ext = [0]
    for v in labels:
        ext += [int(v), 0]
    n = len(ext)
    repeats = sum(a == b for a, b in zip(labels, labels[1:], strict=False))
    if t_len < len(labels) + repeats:
        return []
    lp = log_probs[:, ext].double()
    # a move s-2 → s skips a blank: allowed into a label that differs from the label two states back
    skip = torch.tensor([s >= 2 and ext[s] != 0 and ext[s] != ext[s - 2] for s in range(n)])
    neg = torch.tensor(float("-inf"), dtype=torch.float64)
    score = torch.full((n,), float("-inf"), dtype=torch.float64)
    score[0] = lp[0, 0]
    if n > 1:
        score[1] = lp[0, 1]
    back = torch.zeros(t_len, n, dtype=torch.long)
    for t in range(1, t_len):
        stay = score
        step = torch.cat([neg[None], score[:-1]])
        jump = torch.where(skip, torch.cat([neg[None].repeat(2), score[:-2]]), neg)
        cand = torch.stack([stay, step, jump])
        best, arg = cand.max(0)
        score = best + lp[t]
        back[t] = arg
    s = n - 1 if n < 2 or score[n - 1] >= score[n - 2] else n - 2
    first: dict[int, int] = {}
    for t in range(t_len - 1, -1, -1):
        if s % 2 == 1:
            first[s // 2] = t  # walking backwards: the last write is the first frame
        s -= int(back[t, s])
    return [first[k] for k in range(len(labels))] if len(first) == len(labels) else []


def span_labels(onsets: list[int], labels: list[int], n_frames: int) -> torch.Tensor:
    """Frame classes from each label's emission frame: the frames between two consecutive emissions split
    at their midpoint, the first and last labels extended by half the median spacing before and after
    them; 0 (no token) outside, -1 for every frame when there are no onsets."""
    if not onsets:
        return torch.full((n_frames,), -1, dtype=torch.long)
    out = torch.zeros(n_frames, dtype=torch.long)
    gaps = [b - a for a, b in zip(onsets, onsets[1:], strict=False)]
    half = max(1, round(sorted(gaps)[len(gaps) // 2] / 2)) if gaps else 3
    bounds = [max(0, onsets[0] - half)]
    bounds += [(a + b + 1) // 2 for a, b in zip(onsets, onsets[1:], strict=False)]
    bounds.append(min(n_frames, onsets[-1] + half + 1))
    for k, v in enumerate(labels):
        out[bounds[k] : bounds[k + 1]] = v
    return out


class _Aligner:
    """Frame targets for a student encoder from the transcript aligned on the teacher stream
    (``train.warmup_aligners``): a linear CTC head over the warm-up's classes is fitted on the teacher's
    frozen encoder features (clean inputs, resampled to the student's frame rate, standardised), then each
    training transcript is force-aligned to them (Viterbi) and every student frame gets the class of the
    token being spoken (0 between and around the words). Real corpora have no phoneme timings; the audio
    gives them, as forced alignment gives the frame targets of hybrid ASR systems. Frame cross-entropy
    on them gives every video frame a target from the first step, where CTC from scratch first learns
    blanks everywhere (docs/results.md, issue 14, fifth round)."""

    def __init__(self, teacher: str, labels: dict[str, torch.Tensor], token_error: float) -> None:
        self.teacher = teacher
        self.labels = labels
        self.token_error = token_error

    @classmethod
    def build(
        cls,
        model: AVSRModel,
        exp: Any,
        student: str,
        index: torch.Tensor,
        gen: torch.Generator,
        report: WarmupReport,
        epochs: int = 24,
    ) -> _Aligner | None:
        t = exp.train
        teacher = (t.warmup_aligners or {}).get(student)
        if teacher is None or not t.warmup_aligner_weight:
            return None
        start = time.time()
        s_enc = model.encoders[model.cfg.streams[student].encoder]
        if teacher in (t.aligner_encoders or {}):  # an encoder built for the alignment alone
            t_cfg = t.aligner_encoders[teacher]
            t_enc = build_encoder(t_cfg).to(model.device).eval()
            mods = list(t_enc.accepts)
            # a folder cache (train.feature_cache) keeps its features for the runs that follow: a VSR stage's
            # alignment features are an AVSR stage's warm-up features (same encoder, same clean inputs)
            cache = (
                FeatureCache(t.feature_cache, encoders={teacher})
                if t.feature_cache and t.feature_cache != MEMORY
                else None
            )

            def encode(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
                inputs = {m: batch.inputs[m] for m in mods}
                lengths = {m: batch.lengths[m] for m in mods}
                if cache is not None:
                    return cache.encode(teacher, t_enc, t_cfg, inputs, lengths)
                return t_enc(inputs, lengths)
        else:
            _check_teacher(model, "warmup_aligners", student, teacher)
            t_enc = model.encoders[model.cfg.streams[teacher].encoder]
            mods = list(model.cfg.streams[teacher].inputs)

            def encode(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
                return model.encoder_features(teacher, batch)

        ratio = float(t_enc.frame_rate) / float(s_enc.frame_rate)  # teacher frames per student frame
        collator = Collator(model.tokenizer, mods)
        data = _data(exp, mods)
        loader = build_dataloader(load_split(data, "train"), data, collator, "val", modalities=mods)
        feats, ys, ids = [], [], []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in tqdm(loader, desc=f"Alignment: {teacher} features", unit="batch", leave=False):
                    if not len(batch):
                        continue
                    batch = batch.to(model.device)
                    f, lens = encode(batch)
                    for i in range(len(batch)):
                        seq = f[i, : int(lens[i])].float().cpu()
                        out = torch.zeros(max(1, int(len(seq) / ratio)), seq.shape[-1])
                        frames = _area_resample(seq, ratio, len(out), out)
                        feats.append(out[: max(frames, 1)])
                        ys.append(index[_targets(batch.target_ids[i], collator.eos_id).cpu()])
                        ids.append(batch.ids[i])
        finally:
            model.train(was_training)
        every = torch.cat(feats)
        mean, std = every.mean(0), every.std(0) + 1e-5
        feats = [(f - mean) / std for f in feats]
        head = fit_ctc_head(feats, ys, int(index.max()) + 1, gen, epochs)
        labels: dict[str, torch.Tensor] = {}
        errors = ErrorCounts()
        with torch.no_grad():
            for i, f in enumerate(feats):
                lp = head(f).log_softmax(-1)
                errors = errors + align_counts([str(int(v)) for v in ys[i]], [str(v) for v in _greedy(lp)])
                labels[ids[i]] = span_labels(ctc_align(lp, ys[i].tolist()), ys[i].tolist(), len(f))
        known = torch.cat([v for v in labels.values()])
        key = f"{student}.alignment"
        report.token_error_rate[key] = errors.rate
        log.info(
            "Alignment of the training transcripts on the %s stream for the %s encoder: the %s CTC head's "
            "greedy token error rate %.1f %%; %d of %d utterances aligned, %.0f %% of their frames in a token "
            "(%.0f s)",
            teacher,
            student,
            teacher,
            100 * errors.rate,
            sum(1 for v in labels.values() if len(v) and int(v[0]) >= 0),
            len(labels),
            100 * float((known > 0).float().sum() / (known >= 0).float().sum().clamp(min=1)),
            time.time() - start,
        )
        return cls(teacher, labels, errors.rate)

    def token_labels(self, utt: str, n_tokens: int, ratio: int) -> torch.Tensor:
        """The classes of an utterance's ``n_tokens`` outputs after a stack of ``ratio`` student frames:
        each the class of the frame at its centre (-1: unknown)."""
        lab = self.labels.get(utt, _NO_LABELS)
        centre = torch.arange(n_tokens) * ratio + ratio // 2
        out = torch.full((n_tokens,), -1, dtype=torch.long)
        ok = centre < len(lab)
        out[ok] = lab[centre[ok]]
        return out


def stream_epochs(t: Any, name: str) -> float:
    """Warm-up epochs of stream ``name``: its entry when ``train.ctc_warmup_streams`` is a mapping."""
    chosen = t.ctc_warmup_streams
    if isinstance(chosen, dict):
        return float(chosen[name])
    return float(t.ctc_warmup_epochs)


def _warm_trained_stream(
    model: AVSRModel,
    exp: Any,
    name: str,
    index: torch.Tensor,
    unit: torch.Tensor,
    radius: float,
    report: WarmupReport,
    encoder_rate: bool = False,
    aligner: _Aligner | None = None,
) -> None:
    """Encoder + compressor + projector of ``name`` trained together with CTC, from the training loader
    (augmented, shuffled by epoch), in bf16 autocast when the run trains in bf16. ``encoder_rate``: the
    encoder alone with a temporary linear head over the classes at its own frame rate (no compression,
    no projector; the head is discarded and the report holds the encoder's own CTC figures under
    ``<name>.encoder``). ``aligner``: in the encoder-rate warm-up, a third temporary linear head learns the
    frame classes of :class:`_Aligner` with cross-entropy (reported under ``<name>.aligned``)."""

    t = exp.train
    scfg = model.cfg.streams[name]
    mods = list(scfg.inputs)
    teacher_name = (t.warmup_teachers or {}).get(name) if encoder_rate else None
    if teacher_name is not None:
        _check_teacher(model, "warmup_teachers", name, teacher_name)
        teacher_mods = [m for m in model.cfg.streams[teacher_name].inputs if m not in mods]
        mods += teacher_mods
    collator = Collator(model.tokenizer, mods)
    data = _data(exp, mods)
    if teacher_name is not None:  # the teacher hears clean audio (and its features come from the cache)
        data = dataclasses.replace(
            data,
            train_augment=[m for m in data.train_augment if m not in teacher_mods],
            augment_variants={m: k for m, k in data.augment_variants.items() if m not in teacher_mods},
        )
    if encoder_rate and t.encoder_warmup_batch_size is not None:
        bs = t.encoder_warmup_batch_size
        grow = bs / data.max_batch_size if data.max_batch_size else 1.0
        data = dataclasses.replace(data, max_batch_size=bs, max_frames=max(1, round(data.max_frames * grow)))
    utterances = load_split(data, "train")
    epochs = stream_epochs(t, name)
    # one loader, a new shuffle each epoch through its sampler (as Lightning does in training)
    loader = build_dataloader(utterances, data, collator, "train", modalities=mods)
    per_epoch = len(loader)
    total = max(1, round(epochs * per_epoch))
    proj = model.projector(name)
    enc = model.encoders[scfg.encoder]
    teacher = None
    if encoder_rate:
        ref = next(enc.parameters())
        head = nn.Linear(enc.output_dim, unit.shape[0] + 1).to(ref.device)
        extra: list[nn.Parameter] = []
        desc = f"CTC warm-up: {name} encoder"
        if teacher_name is not None:
            teacher = _Teacher(model, teacher_name, enc.output_dim, enc.frame_rate)
            extra = [*teacher.head.parameters()]
            desc += f" (+ {teacher_name} teacher)"
        if aligner is not None:
            a_head = nn.Linear(enc.output_dim, unit.shape[0] + 1).to(ref.device)
            extra += [*a_head.parameters()]
            desc += f" (+ tokens aligned on {aligner.teacher})"
        fit = _Fit(enc.parameters(), unit, t.ctc_warmup_lr, total, desc, head=head, extra_params=extra)
    else:
        params = [*enc.parameters(), *proj.parameters()]
        fit = _Fit(params, unit, t.ctc_warmup_lr, total, f"CTC warm-up: {name} encoder + projector")

    def features(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if encoder_rate:
            return model.encoder_features(name, batch)
        return model.stream_features(name, batch)

    autocast = (
        torch.autocast(model.device.type, dtype=torch.bfloat16)
        if resolve_precision(str(t.precision), model.device.type).startswith("bf16")
        else contextlib.nullcontext()
    )
    eos = collator.eos_id
    feats: list[torch.Tensor] = []  # clean features and transcripts of a few utterances, at the end
    targets: list[torch.Tensor] = []
    val_feats: list[torch.Tensor] = []  # the same on the validation utterances
    val_targets: list[torch.Tensor] = []
    was_training = model.training
    model.train()
    try:
        for epoch in range(math.ceil(epochs)):
            loader.batch_sampler.set_epoch(epoch)
            for batch in loader:
                if fit.done:
                    break
                if not len(batch):
                    continue
                batch = batch.to(model.device)
                with autocast:
                    f, lens = features(batch)
                ys = [index[_targets(batch.target_ids[i], eos).cpu()] for i in range(len(batch))]
                extra_loss = {}
                if teacher is not None:
                    extra_loss["teacher"] = t.warmup_teacher_weight * teacher.loss(f, batch, lens)
                if aligner is not None:
                    labels = [aligner.labels.get(u, _NO_LABELS) for u in batch.ids]
                    logits = a_head(f.float())
                    extra_loss["aligned"] = t.warmup_aligner_weight * _frame_ce(logits, labels)
                fit.step(proj, f, lens.cpu(), ys, extra_loss)
        # the norm and the error rate on clean inputs, encoder in eval mode
        model.eval()

        def encode_clean(utts: list[Any], fs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
            check = build_dataloader(utts, data, collator, "val", modalities=mods)
            for batch in check:
                if not len(batch):
                    continue
                batch = batch.to(model.device)
                with autocast:
                    f, lens = features(batch)
                for i in range(len(batch)):
                    fs.append(f[i, : int(lens[i])].float().cpu())
                    ys.append(_targets(batch.target_ids[i], eos).cpu())

        with torch.no_grad():
            encode_clean(utterances[:200], feats, targets)
            if data.val_csv is not None:
                encode_clean(load_split(data, "val")[:200], val_feats, val_targets)
    finally:
        fit.bar.close()
        model.train(was_training)
    keep = list(range(len(feats)))
    val = (val_feats, val_targets) if val_feats else None
    if encoder_rate:
        key = f"{name}.encoder.aligned"
        if fit.report_extra(report, key, "aligned", per_epoch, t.warmup_aligner_weight):
            log.info(
                "Aligned tokens of the %s encoder: frame cross-entropy %.3f → %.3f",
                name,
                report.first_loss[key],
                report.last_loss[key],
            )
        if fit.report_extra(report, f"{name}.teacher", "teacher", per_epoch, t.warmup_teacher_weight):
            key = f"{name}.teacher"
            log.info(
                "Distillation of the %s encoder from the %s stream's features: mean squared error of the "
                "standardised features %.3f → %.3f (1 = no better than their mean)",
                name,
                teacher_name,
                report.first_loss[key],
                report.last_loss[key],
            )
        fit.finish(f"{name}.encoder", "encoder", per_epoch, proj, feats, targets, keep, index, report, val)
        return
    _match_norm(proj, feats, keep, radius)
    fit.finish(name, "encoder and projector", per_epoch, proj, feats, targets, keep, index, report, val)


@torch.no_grad()
def _match_norm(proj: nn.Module, feats: list[torch.Tensor], keep: list[int], radius: float) -> None:
    """Scale the projector's last linear layer so its outputs have the embeddings' mean norm: the
    direction was trained, the norm was free, and tokens far larger than the LLM's embeddings would
    drown the text tokens in the residual stream."""
    last = [m for m in proj.modules() if isinstance(m, nn.Linear)][-1]
    dtype, device = last.weight.dtype, last.weight.device
    norms = torch.cat([proj(feats[i].to(device, dtype)).float().norm(dim=-1) for i in keep[:200]])
    factor = radius / float(norms.mean())
    last.weight.mul_(factor)
    if last.bias is not None:
        last.bias.mul_(factor)


@torch.no_grad()
def _token_error_rate(
    logits: Any,
    feats: list[torch.Tensor],
    targets: list[torch.Tensor],
    keep: list[int],
    index: torch.Tensor,
    limit: int = 200,
) -> float:
    """Greedy CTC token error rate of ``logits`` (features (T, D) → (T, 1 + V)) on (up to ``limit``)
    utterances ``keep``."""
    total = ErrorCounts()
    for i in keep[:limit]:
        hyp = [str(c) for c in _greedy(logits(feats[i]))]
        # a validation transcript may hold tokens no training transcript has: no class, always an error
        ref = [
            str(int(index[c])) if c < len(index) and int(index[c]) else f"unseen:{c}"
            for c in targets[i].tolist()
        ]
        total = total + align_counts(ref, hyp)
    return total.rate


def _stream_val(
    model: AVSRModel, exp: Any, name: str, rates: dict[str, int] | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """Stream ``name``'s validation features and transcripts (``None`` without ``data.val_csv``)."""
    val = _val_features(model, exp, [name], rates)
    return None if val is None else (val[0][name], val[1])


def _val_features(
    model: AVSRModel, exp: Any, streams: list[str], rates: dict[str, int] | None = None
) -> tuple[dict[str, list[torch.Tensor]], list[torch.Tensor]] | None:
    """:func:`_collect` on the validation split (``None`` when ``data.val_csv`` is not set)."""
    if exp.data.val_csv is None:
        return None
    return _collect(model, exp, streams, rates, split="val")
