"""A light lip-reading front-end for encoders trained from scratch on a CPU (``kind: lipconv``).

AV-HuBERT's front-end (a Conv3d stem and a ResNet-18 trunk over 88×88 crops, then a transformer) is what
the paper's pretrained encoder needs; trained from nothing on two CPU cores it costs most of a training
step and learns slowly. This encoder keeps what lip reading needs and drops the rest::

    (B, T, 1, 88, 88) ──area-downsample──► (B·T, 1, S, S) ── minus the utterance's mean frame
        ──► per-frame 2D stem: [Conv3×3/2 → ReLU → Conv3×3 → ReLU] × len(widths) (channels-last;
            none when widths is empty: the pixels themselves)
        ──► flatten → Linear(→ dim) ── minus the utterance's mean feature ── LayerNorm ──► (B, T, dim)
        ──► temporal residual blocks: x + Conv1d(k)(ReLU(Conv1d(k)(x)))  (padding frames kept at 0),
            post-norm LayerNorm(x + h(x)) or pre-norm x + h(LayerNorm(x)) then one final LayerNorm
        ──► (B, T, dim) at 25 Hz

* The demo's front-end (``configs/arch/lipconv-demo.json``) has no conv stem: a linear map of the 22×22
  mean-removed mouth (and its mean frame), then the temporal blocks, pre-norm. Video CTC from scratch on
  the synthetic corpus (``examples/video_ctc.py``-style runs, 1200 training utterances, batch 8, one
  thread, the machine under load, 2026-12-01): the 44×44 three-stage conv stem ran 0.56 steps/s and
  reached a validation greedy token error of 0.88 after 300 steps (20 minutes); the pixel front-end runs
  2.2–3.4 steps/s and reaches 0.62 after 1000 steps (7.5 minutes), 0.58 with the distillation warm-up
  (``train.warmup_teachers``). On these crops the conv stem's cost buys nothing the temporal blocks
  cannot learn from the pixels within a CPU budget.
* Pre-norm temporal blocks: in post-norm blocks a block output ``h`` that is the same at every frame (which
  is what a CTC model predicting blanks everywhere learns first) is normalised together with the residual
  and scales the movement away — measured on a trained demo model, 36 % of the difference between the
  real and a blank video was left after the first block and 1.3 % after the second. Pre-norm blocks add
  to an un-normalised residual path, so what moves keeps reaching the output.

* Subtracting each utterance's mean frame (over its valid frames) cancels the speaker's static
  appearance (skin, lip colour, lighting, position) and leaves the movement: a linear viseme probe on
  such crops reaches 40 % on held-out voices (``tests/test_lip_probe.py``). The mean frame is kept as an
  extra input channel so the absolute shape is not lost.
* Subtracting each utterance's mean feature after the frame projection (``center_features``, the
  visual counterpart of cepstral mean normalisation): the static part of each frame's features (what
  the mean-frame channel and the lips at rest give every frame) is far larger than the part that
  moves, and the per-frame LayerNorm then scales the movement away. Measured on a demo model trained
  without it: features of the real mouth video and of a blank one differed by 86 % before that
  LayerNorm, 1 % after it and 0.002 % after the temporal blocks: the LLM got a constant and the WER
  was identical with the video blanked. Centred, a blank video gives a constant and moving lips what
  moves.
* No BatchNorm: batches here are a handful of utterances with padding frames, where batch statistics
  are noisy and differ between training and evaluation.
* It computes in its own weights' dtype even inside a bf16 autocast region: on CPUs without native bf16
  (AVX2), PyTorch's bf16 conv2d falls back to ``_slow_conv2d`` and the bf16 GEMMs are slow too — the
  whole encoder's forward + backward measured 14–17 s against 1.1–1.6 s in float32 (batch 4 × 75 frames,
  one thread). The encoder is small, so float32 costs little anywhere.
* The flattened stem output keeps where in the crop each feature is (lip closure vs opening vs rounding
  are spatial patterns); a global average pool would throw that away.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from llama_avsr.config import EncoderConfig, find_arch, torch_dtype
from llama_avsr.models.encoders.base import ENCODERS, Encoder, parse_options


@dataclass
class LipConvOptions:
    """``EncoderConfig.options`` for ``kind: lipconv``.

    input_size: crops are area-downsampled to input_size×input_size inside the encoder (88 = none).
    widths: channels of the 2D stages (each halves the resolution).
    dim: feature width D. temporal_layers / kernel: residual temporal convolution blocks.
    subtract_mean: feed the frame minus the utterance's mean frame (plus the mean frame as a second
    channel) instead of the raw frame.
    dropout: on the features after the stem and after each temporal block, in training.
    center_features: subtract each utterance's mean (over its valid frames) from the projected frame
    features before their LayerNorm (module docstring).
    prenorm: temporal blocks as ``x + h(LayerNorm(x))`` with one LayerNorm after the last block, instead of
    ``LayerNorm(x + h(x))`` (module docstring).
    """

    input_size: int = 44
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    dim: int = 256
    temporal_layers: int = 2
    kernel: int = 5
    subtract_mean: bool = True
    dropout: float = 0.1
    center_features: bool = True
    prenorm: bool = False

    def __post_init__(self) -> None:
        if self.input_size < 4 or self.dim < 1 or (self.widths and min(self.widths) < 1):
            raise ValueError("lipconv: input_size >= 4, dim >= 1 and positive widths are required")
        if self.kernel < 1 or self.kernel % 2 == 0 or self.temporal_layers < 0:
            raise ValueError("lipconv: kernel must be odd and positive, temporal_layers >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("lipconv: dropout must be in [0, 1)")


class _TemporalBlock(nn.Module):
    def __init__(self, dim: int, kernel: int, dropout: float, prenorm: bool = False) -> None:
        super().__init__()
        self.prenorm = prenorm
        self.conv1 = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), valid (B, T, 1) → (B, T, D); padding frames stay 0 so they leak into no frame."""
        v = valid.transpose(1, 2)  # (B, 1, T)
        inp = self.norm(x) * valid if self.prenorm else x
        h = self.conv2(F.relu(self.conv1(inp.transpose(1, 2))) * v).transpose(1, 2)
        if self.prenorm:
            return (x + self.drop(h)) * valid
        return self.norm(x + self.drop(h)) * valid


class LipConvEncoder(Encoder):
    """Mouth crops (B, T, 1, H, W) → features (B, T, dim) at 25 Hz (module docstring)."""

    accepts = ("video",)
    frame_rate = 25.0

    def __init__(self, options: LipConvOptions) -> None:
        super().__init__()
        self.options = options
        layers: list[nn.Module] = []
        c_in, size = (2 if options.subtract_mean else 1), options.input_size
        for w in options.widths:
            layers += [
                nn.Conv2d(c_in, w, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(w, w, 3, padding=1),
                nn.ReLU(),
            ]
            c_in, size = w, (size + 1) // 2
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in * size * size, options.dim)
        self.norm = nn.LayerNorm(options.dim)
        self.drop = nn.Dropout(options.dropout)
        self.temporal = nn.ModuleList(
            _TemporalBlock(options.dim, options.kernel, options.dropout, options.prenorm)
            for _ in range(options.temporal_layers)
        )
        self.final_norm = nn.LayerNorm(options.dim) if options.prenorm and options.temporal_layers else None
        self.output_dim = options.dim

    def forward(
        self, inputs: Mapping[str, torch.Tensor], lengths: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs ``video`` (B, T, 1, H, W) normalised crops, lengths (B,) → (B, T, dim), lengths (B,)."""
        if set(inputs) != {"video"}:
            raise ValueError(f"lipconv takes video only, got {sorted(inputs)}")
        with torch.autocast(inputs["video"].device.type, enabled=False):
            return self._encode(inputs["video"], lengths["video"])

    def _encode(self, video: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = video.shape[:2]
        lens = lengths.to(video.device)
        dtype = self.proj.weight.dtype
        valid = (torch.arange(t, device=video.device) < lens[:, None]).to(dtype)  # (B, T)
        x = video.to(dtype).flatten(0, 1)  # (B·T, 1, H, W)
        s = self.options.input_size
        if x.shape[-1] != s or x.shape[-2] != s:
            x = F.adaptive_avg_pool2d(x, s)
        x = x.view(b, t, s, s) * valid[:, :, None, None]
        if self.options.subtract_mean:
            mean = x.sum(1, keepdim=True) / lens.clamp(min=1).to(dtype)[:, None, None, None]  # (B, 1, S, S)
            x = torch.stack(
                [(x - mean) * valid[:, :, None, None], mean.expand_as(x)], dim=2
            )  # (B, T, 2, S, S)
        else:
            x = x[:, :, None]
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        x = self.stem(x).flatten(1)  # (B·T, C·s·s)
        x = self.proj(x).view(b, t, -1) * valid[..., None]
        if self.options.center_features:
            mean = x.sum(1, keepdim=True) / lens.clamp(min=1).to(dtype)[:, None, None]
            x = (x - mean) * valid[..., None]
        x = self.drop(self.norm(x)) * valid[..., None]
        for block in self.temporal:
            x = block(x, valid[..., None])
        if self.final_norm is not None:
            x = self.final_norm(x) * valid[..., None]
        return x, lens


@ENCODERS.register("lipconv")
def build_lipconv(cfg: EncoderConfig) -> LipConvEncoder:
    """Randomly initialised (``source`` must be null: no pretrained weights exist for it). ``arch`` names a
    JSON file of :class:`LipConvOptions` fields (``configs/arch/lipconv-demo.json``); ``options`` override it."""
    if cfg.source is not None:
        raise ValueError("encoder kind lipconv is trained from scratch: set source: null")
    base = json.loads(find_arch(cfg.arch).read_text()) if cfg.arch else {}
    base = {k: v for k, v in base.items() if not k.startswith("_")}
    options: LipConvOptions = parse_options(LipConvOptions, {**base, **cfg.options}, cfg.kind)
    return LipConvEncoder(options).to(torch_dtype(cfg.dtype))
