"""The one interface every encoder implements.

An encoder consumes one or more raw modality tensors of a batch and returns frame features with their
valid lengths. Raw inputs (what the collator produces):

- ``audio``: (B, T_a) float waveform at 16 kHz as read (noise added, not normalised), lengths in samples:
  each encoder normalises its own audio (:func:`layer_norm_waveform` for Whisper and WavLM, as the
  reference does; AV-HuBERT computes normalised filterbanks);
- ``video``: (B, T_v, 1, 88, 88) float mouth crops, already normalised, lengths in frames (25 fps).

Output: features (B, T, D) with D = ``output_dim`` and lengths (B,) in output frames. Frames at or
beyond a sample's length are padding and must not be used downstream.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llama_avsr.config import EncoderConfig
from llama_avsr.registry import Registry


class Encoder(nn.Module, ABC):
    """Base class: ``forward(inputs, lengths) -> (features (B,T,D), lengths (B,))``."""

    #: batch fields this encoder can consume ("audio", "video"); a stream passes a subset
    accepts: tuple[str, ...] = ()
    #: feature width D
    output_dim: int
    #: output frames per second
    frame_rate: float
    #: the longest input the encoder reads whole, in seconds (``None``: no limit); callers cut longer ones
    max_seconds: float | None = None

    @abstractmethod
    def forward(
        self, inputs: Mapping[str, torch.Tensor], lengths: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``inputs[name]`` for each name given (a subset of ``accepts``)."""

    #: False for frozen encoders: ``train()`` then keeps them in eval mode (set by ``build_encoder``)
    keep_train_mode: bool = True

    def train(self, mode: bool = True) -> Encoder:
        return super().train(mode and self.keep_train_mode)

    def lora_parameters(self) -> list[nn.Parameter]:
        """Parameters of encoder-side LoRA adapters (empty when the encoder has none)."""
        return []


#: eps of the waveform layer norm (reference)
WAVEFORM_LN_EPS = 1e-8


def layer_norm_waveform(
    wav: torch.Tensor, lengths: torch.Tensor, eps: float = WAVEFORM_LN_EPS
) -> torch.Tensor:
    """Zero mean, unit variance over each utterance's valid samples (``F.layer_norm(x, x.shape)`` per
    sample, as the reference normalises a lone waveform); padding stays zero. (B, T) → (B, T) float32."""
    wav = wav.float()
    out = torch.zeros_like(wav)
    for i, n in enumerate(lengths.tolist()):
        if n:
            out[i, :n] = F.layer_norm(wav[i, :n], (n,), eps=eps)
    return out


EncoderBuilder = Callable[[EncoderConfig], Encoder]
#: kind → builder(EncoderConfig) -> Encoder.  Builders parse ``cfg.options`` into their own dataclass.
ENCODERS: Registry[EncoderBuilder] = Registry("encoder")


def parse_options(options_cls: type, options: Mapping[str, Any], kind: str):
    """Build an encoder's typed options dataclass, rejecting unknown keys with a clear message."""
    names = {f.name for f in dataclasses.fields(options_cls)}
    unknown = set(options) - names
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for encoder {kind!r}; known: {sorted(names)}")
    return options_cls(**options)


def build_encoder(cfg: EncoderConfig) -> Encoder:
    """Build an encoder from its config and apply the freezing policy.

    Frozen encoders get ``requires_grad=False`` and run in eval mode (no dropout, no BatchNorm
    statistic updates) unless ``cfg.train_mode`` asks for the reference's train-mode behaviour.
    Encoder-side LoRA parameters stay trainable.
    """
    # importing the package registers the built-in encoders
    import llama_avsr.models.encoders  # noqa: F401

    enc = ENCODERS.get(cfg.kind)(cfg)
    if cfg.frozen:
        enc.requires_grad_(False)
        for p in enc.lora_parameters():
            p.requires_grad_(True)
    enc.keep_train_mode = cfg.train_mode or not cfg.frozen
    if not enc.keep_train_mode:
        enc.eval()
    return enc
