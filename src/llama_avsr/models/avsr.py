"""The fused Llama-AVSR model: encoders → compressors → projectors → LLM (+LoRA).

Modalities are data: encoders, compressors and projectors live in ``nn.ModuleDict``s keyed by the
names in :class:`~llama_avsr.config.ModelConfig`, and one loop runs every stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from llama_avsr.config import ModelConfig
from llama_avsr.data.batch import PAD_LABEL, Batch
from llama_avsr.io import atomic_write_bytes
from llama_avsr.models.compression import build_compressor
from llama_avsr.models.encoders import build_encoder
from llama_avsr.models.feature_cache import FeatureCache
from llama_avsr.models.llm import (
    TokenIds,
    activate_adapters,
    apply_lora,
    base_causal_lm,
    load_llm,
    load_tokenizer,
    token_ids,
)
from llama_avsr.models.projector import Projector
from llama_avsr.models.splice import Sequences, StreamFeatures, build_sequences

log = logging.getLogger(__name__)


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


@dataclass
class AVSROutput:
    """``loss`` = lm_loss + sink_loss. ``lm_loss_sum`` / ``n_tokens`` allow averaging over the tokens
    of a global batch (distributed training)."""

    loss: torch.Tensor
    lm_loss: torch.Tensor
    sink_loss: torch.Tensor
    lm_loss_sum: torch.Tensor
    n_tokens: torch.Tensor


class TrainableStateError(ValueError):
    """Saved trainable weights that do not fit this model's configuration."""


class AVSRModel(nn.Module):
    #: frozen-encoder features served from a cache (``models.feature_cache``); ``None``: always encode
    feature_cache: FeatureCache | None = None

    def __init__(self, cfg: ModelConfig, tokenizer=None, meta: bool = False) -> None:
        """Build the model. ``meta=True`` builds every part on the meta device from the architecture
        configs (no weights, no tokenizer): enough to count parameters."""
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        if tokenizer is None and not meta:
            self.tokenizer = load_tokenizer(cfg.llm.tokenizer or cfg.llm.source)
        self.ids: TokenIds | None = token_ids(self.tokenizer) if self.tokenizer is not None else None

        self.encoders = nn.ModuleDict()
        for name, ecfg in cfg.encoders.items():
            if meta:
                ecfg = dataclasses.replace(ecfg, source=None)
            with torch.device("meta") if meta else contextlib.nullcontext():
                self.encoders[name] = build_encoder(ecfg)

        llm = load_llm(cfg.llm, len(self.tokenizer) if self.tokenizer is not None else None, meta=meta)
        self.hidden_size = llm.get_input_embeddings().embedding_dim
        self.llm = apply_lora(llm, cfg.llm.lora, cfg.all_adapters()) if cfg.llm.lora is not None else llm
        self._active_adapters: list[str] | None = None
        # HF cuts the last position out of the final hidden states before the output layer: a
        # non-contiguous (B, 1, H) view, for which CPU matmul copies the vocabulary matrix once per row
        # (seconds for a beam-search prefill of 64 rows); a contiguous input takes the plain GEMM path
        base_causal_lm(self.llm).get_output_embeddings().register_forward_pre_hook(_contiguous_input)

        # one compressor per stream and rate; one projector per stream, or per stream and rate for a
        # Matryoshka stream (``projectors.<stream>.x<k>.*``) unless it shares one across its rates
        self.compressors = nn.ModuleDict()
        self.projectors = nn.ModuleDict()
        for name, scfg in cfg.streams.items():
            rates = scfg.compression.rates
            comps = {k: build_compressor(dataclasses.replace(scfg.compression, ratio=k)) for k in rates}
            self.compressors[name] = nn.ModuleDict({f"x{k}": c for k, c in comps.items()})
            dim_out = self.encoders[scfg.encoder].output_dim
            with torch.device("meta") if meta else contextlib.nullcontext():
                if len(rates) == 1 or scfg.projector.shared_across_rates:
                    dim_in = comps[scfg.compression.ratio].output_dim(dim_out)
                    self.projectors[name] = Projector(dim_in, self.hidden_size, scfg.projector)
                else:
                    self.projectors[name] = nn.ModuleDict(
                        {
                            f"x{k}": Projector(c.output_dim(dim_out), self.hidden_size, scfg.projector)
                            for k, c in comps.items()
                        }
                    )
        self._prompt_ids = {
            t: (
                self.tokenizer(cfg.prompt_for(t), add_special_tokens=False)["input_ids"]
                if self.tokenizer
                else []
            )
            for t in [None, *cfg.task_names]
        }
        self._configure_trainable()

    # ------------------------------------------------------------------------------------------
    # what trains — the one place that decides it

    def _configure_trainable(self) -> None:
        """Projectors always train; LLM LoRA adapters train when LoRA is on (otherwise the LLM is
        frozen: the reference's ``add_PETF_LLM None``); encoders train only when ``frozen: false``,
        and encoder-side LoRA (AV-HuBERT) trains when enabled."""
        self.requires_grad_(False)
        self.projectors.requires_grad_(True)
        for name, enc in self.encoders.items():
            if not self.cfg.encoders[name].frozen:
                enc.requires_grad_(True)
            for p in enc.lora_parameters():
                p.requires_grad_(True)
        if self.cfg.llm.lora is not None:
            for n, p in self.llm.named_parameters():
                if "lora_" in n:
                    p.requires_grad_(True)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable parameters, plus the buffers (e.g. BatchNorm statistics) of trained encoders."""
        state = {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
        for name, enc in self.encoders.items():
            if not self.cfg.encoders[name].frozen:
                state.update(enc.state_dict(prefix=f"encoders.{name}."))
        return state

    def save_trainable(self, path: str | Path) -> None:
        """Write the trainable state as safetensors (atomically: temp file, fsync, rename)."""
        state = {k: v.contiguous().cpu() for k, v in self.trainable_state_dict().items()}
        atomic_write_bytes(path, safetensors_bytes(state))

    def load_trainable(
        self, path_or_state: str | Path | dict[str, torch.Tensor], strict: bool = True
    ) -> None:
        """Load weights saved by :meth:`save_trainable`; mismatches raise :class:`TrainableStateError`."""
        state = path_or_state
        if not isinstance(state, dict):
            try:
                state = load_file(str(path_or_state))
            except Exception as e:  # safetensors raises several types for damaged files
                raise TrainableStateError(f"{path_or_state}: not a readable safetensors file ({e})") from e
        own = self.trainable_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [
            f"{k}: saved {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in set(own) & set(state)
            if state[k].shape != own[k].shape
        ]
        if shapes or (strict and (missing or unexpected)):
            raise TrainableStateError(
                "trainable weights do not match this model configuration"
                + (
                    f"; missing {missing[:5]}{'…' if len(missing) > 5 else ''} ({len(missing)})"
                    if missing
                    else ""
                )
                + (f"; unexpected {unexpected[:5]} ({len(unexpected)})" if unexpected else "")
                + (f"; shape mismatch {shapes[:5]}" if shapes else "")
            )
        with torch.no_grad():
            params = dict(self.named_parameters())
            buffers = dict(self.named_buffers())
            for k, v in state.items():
                if k in params:
                    params[k].copy_(v)
                elif k in buffers:
                    buffers[k].copy_(v)

    # ------------------------------------------------------------------------------------------
    # forward path

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def projector(self, name: str, rate: int | None = None) -> Projector:
        """Stream ``name``'s projector at compression ``rate`` (default: the stream's ``ratio``)."""
        proj = self.projectors[name]
        if isinstance(proj, nn.ModuleDict):
            return proj[f"x{rate or self.cfg.streams[name].compression.ratio}"]
        return proj

    def compressor(self, name: str, rate: int | None = None) -> nn.Module:
        return self.compressors[name][f"x{rate or self.cfg.streams[name].compression.ratio}"]

    def select(
        self, task: str | None = None, rates: dict[str, int] | None = None
    ) -> tuple[str, dict[str, int]]:
        """Check a task and rates against what the model was trained for and switch the LLM's LoRA
        adapters to them (``llm.lora.strategy``). Returns the resolved (task, rates)."""
        task = self.cfg.check_task(task)
        rates = self.cfg.check_rates(rates, task)
        adapters = self.cfg.adapters_for(task, rates)
        if adapters and adapters != self._active_adapters and self.cfg.llm.lora.strategy != "shared":
            activate_adapters(self.llm, adapters)
            self._active_adapters = adapters
        return task, rates

    def encode(
        self, batch: Batch, task: str | None = None, rates: dict[str, int] | None = None
    ) -> list[StreamFeatures]:
        """Run the streams of ``task`` (default: every stream) at ``rates`` (default: each stream's
        ``ratio``): encoder → compressor → projector. Returns per-stream (B, T, H) + lengths."""
        rates = rates or {}
        out = []
        for name in self.cfg.task_streams(task):
            scfg = self.cfg.streams[name]
            rate = rates.get(name)
            feats, lens = self.stream_features(name, batch, rate)
            proj = self.projector(name, rate)
            feats = proj(feats.to(proj[0].weight.dtype))
            begin = self.ids.added[scfg.begin_token] if scfg.begin_token else None
            end = self.ids.added[scfg.end_token] if scfg.end_token else None
            out.append(StreamFeatures(feats, lens, begin, end))
        return out

    def stream_features(
        self, name: str, batch: Batch, rate: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One stream's encoder → compressor output (B, T, D·ratio) and lengths, before its projector,
        at compression ``rate`` (default: the stream's ``ratio``).

        Frozen encoders run without gradients and are served from :attr:`feature_cache` when set."""
        feats, lens = self.encoder_features(name, batch)
        return self.compressor(name, rate)(feats, lens)

    def encoder_features(self, name: str, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Stream ``name``'s encoder output (B, T, D) at the encoder's frame rate and lengths (B,), before
        compression; a frozen encoder runs without gradients, from :attr:`feature_cache` when set."""
        scfg = self.cfg.streams[name]
        enc = self.encoders[scfg.encoder]
        inputs = {m: batch.inputs[m] for m in scfg.inputs}
        lengths = {m: batch.lengths[m] for m in scfg.inputs}
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in enc.parameters())
        with torch.set_grad_enabled(needs_grad):
            if self.feature_cache is not None and not needs_grad:
                cfg = self.cfg.encoders[scfg.encoder]
                feats, lens = self.feature_cache.encode(scfg.encoder, enc, cfg, inputs, lengths)
            else:
                feats, lens = enc(inputs, lengths)
        return feats, lens

    def prepare(
        self,
        batch: Batch,
        with_targets: bool,
        task: str | None = None,
        rates: dict[str, int] | None = None,
    ) -> Sequences:
        """The LLM input of ``batch`` for ``task`` at ``rates`` (defaults: the model's; see
        :meth:`select`), with the task's prompt; the LoRA adapters of that task and rate are switched on."""
        if with_targets and batch.target_ids is None:
            raise ValueError("training needs target_ids in the batch (collate with_targets=True)")
        task, rates = self.select(task, rates)
        return build_sequences(
            self.llm.get_input_embeddings(),
            self.encode(batch, task if self.cfg.tasks is not None else None, rates),
            self._prompt_ids[task if self.cfg.tasks is not None else None],
            self.ids.bos,
            self.ids.pad,
            batch.target_ids if with_targets else None,
        )

    def forward(
        self, batch: Batch, task: str | None = None, rates: dict[str, int] | None = None
    ) -> AVSROutput:
        """Loss on transcript tokens only (+ optional sink loss), for ``task`` at ``rates`` (defaults:
        the model's; a multi-task / multi-rate objective combines several calls, ``training/objective.py``).

        LM logits are computed only at the positions that predict a transcript token: with a ~50k
        vocabulary the output layer is a large share of the cost and the other positions are unused.
        """
        seq = self.prepare(batch, with_targets=True, task=task, rates=rates)
        base = base_causal_lm(self.llm)
        sink = self.cfg.sink_loss_factor > 0
        out = base.get_decoder()(
            inputs_embeds=seq.embeds,
            attention_mask=seq.attention_mask,
            position_ids=seq.position_ids,
            output_hidden_states=sink,
            use_cache=False,
        )
        nxt = seq.labels[:, 1:]
        sel = nxt != PAD_LABEL
        hidden = out.last_hidden_state[:, :-1][sel]  # (N, H)
        logits = base.get_output_embeddings()(hidden).float()
        n_tokens = sel.sum()
        lm_sum = F.cross_entropy(logits, nxt[sel], reduction="sum")
        lm_loss = lm_sum / n_tokens.clamp(min=1)
        sink_loss = (
            self.cfg.sink_loss_factor * self._sink_loss(out.hidden_states, seq)
            if sink
            else lm_loss.new_zeros(())
        )
        return AVSROutput(lm_loss + sink_loss, lm_loss, sink_loss, lm_sum, n_tokens)

    def _sink_loss(self, hidden_states: tuple[torch.Tensor, ...], seq: Sequences) -> torch.Tensor:
        """Mean over intermediate layers of the squared cosine similarity between the BOS hidden state
        and every other non-output position (follow-up paper, arXiv 2510.22603)."""
        layers = self.cfg.sink_loss_layers or list(range(1, len(hidden_states) - 1))
        b = seq.embeds.shape[0]
        pos = torch.arange(seq.embeds.shape[1], device=seq.embeds.device)[None]
        other = (seq.attention_mask.bool() & (seq.labels == PAD_LABEL) & (pos != seq.start[:, None])).float()
        total = seq.embeds.new_zeros((), dtype=torch.float32)
        for layer in layers:
            h = hidden_states[layer].float()
            bos = h[torch.arange(b), seq.start]  # (B, H)
            cos = F.cosine_similarity(h, bos[:, None], dim=-1)  # (B, S)
            total = total + ((cos**2) * other).sum() / other.sum().clamp(min=1)
        return total / len(layers)

    def parameter_counts(self) -> tuple[int, int]:
        """(total, trainable) parameter counts."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return total, trainable
