"""AV-HuBERT in plain PyTorch, loading fairseq checkpoints without fairseq.

The module tree and parameter names mirror fairseq's ``AVHubertModel`` so that a fairseq state dict
(and the reference Llama-AVSR LoRA keys ``encoder.layers.N.self_attn.lora_{down,up}_{Q,V}.weight``)
loads as is. Only what ``extract_finetune`` needs is built: no masking, no pretraining heads.

Shape legend: B batch, T frames at 25 Hz, D ``encoder_embed_dim``, F ``audio_feat_dim`` (104),
H×W video crop (88×88).

``extract_finetune`` follows the original exactly (see ``tests/data/avhubert_golden/README.md``):
video → Conv3d stem → ResNet-18 trunk → Linear; audio (B, F, T) → Linear; a missing modality becomes
zeros; concat [audio, video] → LayerNorm(2D) → post_extract_proj → zero padded frames → + pos_conv
(weight-normed grouped Conv1d, SamePad, GELU) → pre-LN transformer layers with a key padding mask →
final LayerNorm only when ``output_layer`` is None.

Checkpoints are read with ``torch.load(weights_only=True)`` and an explicit allowlist of small stand-in
classes for the few non-tensor objects fairseq pickles (``Dictionary``, omegaconf ``DictConfig``):
no pickled code runs, and neither fairseq nor omegaconf is imported.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llama_avsr import safe_load
from llama_avsr.config import EncoderConfig, find_arch, torch_dtype
from llama_avsr.errors import UserError
from llama_avsr.models.encoders.avhubert_features import SAMPLES_PER_FRAME, avhubert_audio_features
from llama_avsr.models.encoders.base import ENCODERS, Encoder, parse_options

logger = logging.getLogger(__name__)

#: fairseq model names whose checkpoints hold an AV-HuBERT encoder, with the state-dict key prefix of it
MODEL_NAMES: dict[str, str] = {"av_hubert": "", "av_hubert_seq2seq": "encoder.w2v_model."}
#: pretraining-only parameters, not used by ``extract_finetune``
PRETRAINING_KEYS: tuple[str, ...] = ("mask_emb", "label_embs_concat", "final_proj.")
DEFAULT_RESNET_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)
LORA_REDUCTION = 16  # bottleneck = round(D / 16)  [reference]
LORA_SCALE = 2.0  # [reference]


class CheckpointError(UserError, ValueError):
    """A file that is not a loadable AV-HuBERT fairseq checkpoint; the message names the file and why."""


# --------------------------------------------------------------------------------------------------
# architecture


@dataclass
class AVHubertArch:
    """What the architecture needs from a fairseq ``cfg['model']`` dict (other keys are ignored).

    Defaults are fairseq's ``AVHubertConfig`` defaults, used for keys a config leaves out.
    ``resnet_widths`` is our extension (narrower video trunks trained from scratch); fairseq
    checkpoints always have the ResNet-18 widths (64, 128, 256, 512).
    """

    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    audio_feat_dim: int = 104
    modality_fuse: str = "concat"
    resnet_relu_type: str = "prelu"
    resnet_widths: tuple[int, ...] = DEFAULT_RESNET_WIDTHS
    sub_encoder_layers: int = 0
    # regularisation: active only in train mode
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    feature_grad_mult: float = 1.0

    def __post_init__(self) -> None:
        self.resnet_widths = tuple(int(w) for w in self.resnet_widths)
        d, h = self.encoder_embed_dim, self.encoder_attention_heads
        if d % h:
            raise ValueError(f"encoder_embed_dim {d} is not divisible by encoder_attention_heads {h}")
        if d % self.conv_pos_groups:
            raise ValueError(
                f"encoder_embed_dim {d} is not divisible by conv_pos_groups {self.conv_pos_groups}"
            )
        if self.activation_fn not in _ACTIVATIONS:
            raise ValueError(
                f"activation_fn {self.activation_fn!r} not supported; known: {sorted(_ACTIVATIONS)}"
            )
        if self.modality_fuse not in ("concat", "add"):
            raise ValueError(f"modality_fuse must be 'concat' or 'add', got {self.modality_fuse!r}")
        if self.resnet_relu_type not in ("prelu", "relu", "swish"):
            raise ValueError(f"resnet_relu_type {self.resnet_relu_type!r} not supported")
        if len(self.resnet_widths) != 4 or min(self.resnet_widths) < 1:
            raise ValueError(f"resnet_widths must be 4 positive ints, got {list(self.resnet_widths)}")
        if self.sub_encoder_layers:
            raise ValueError("sub_encoder_layers > 0 (per-modality transformers) is not supported")

    @classmethod
    def from_model_cfg(cls, model_cfg: Mapping[str, Any]) -> AVHubertArch:
        """Pick the architecture fields out of a ``cfg['model']``-style mapping."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in model_cfg.items() if k in names and v is not None}
        if kwargs.get("audio_feat_dim", 0) < 0:  # fairseq's "unset"
            kwargs.pop("audio_feat_dim")
        return cls(**kwargs)

    @property
    def lora_rank(self) -> int:
        return round(self.encoder_embed_dim / LORA_REDUCTION)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x.float()).type_as(x)  # fairseq computes GELU in fp32


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"gelu": _gelu, "relu": F.relu}


class _GradMultiply(torch.autograd.Function):
    """Identity forward, gradient scaled by ``scale`` (fairseq ``GradMultiply``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


# --------------------------------------------------------------------------------------------------
# video frontend: Conv3d stem + ResNet-18 trunk (avhubert/resnet.py)


def _activation(kind: str, channels: int) -> nn.Module:
    if kind == "prelu":
        return nn.PReLU(num_parameters=channels)
    return nn.SiLU() if kind == "swish" else nn.ReLU()


class BasicBlock(nn.Module):
    """ResNet basic block: conv3×3-BN-act-conv3×3-BN, + residual (1×1 conv + BN when shapes change), act."""

    def __init__(self, inplanes: int, planes: int, stride: int, relu_type: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = _activation(relu_type, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = _activation(relu_type, planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + residual)


class ResNetTrunk(nn.Module):
    """Four stages of two basic blocks (strides 1, 2, 2, 2), then global average pooling: (N, C_last)."""

    def __init__(self, widths: Sequence[int], relu_type: str) -> None:
        super().__init__()
        inplanes = widths[0]
        for i, (planes, stride) in enumerate(zip(widths, (1, 2, 2, 2), strict=True)):
            blocks = [
                BasicBlock(inplanes, planes, stride, relu_type),
                BasicBlock(planes, planes, 1, relu_type),
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


class ResEncoder(nn.Module):
    """Conv3d(1→C0, k=(5,7,7)) + BN3d + act + max-pool stem, then the 2D trunk per frame.

    (B, 1, T, H, W) → (B, C_last, T). The reference pools with ``MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))``,
    which never mixes frames; we fold the frames into the batch first and pool each one with the identical
    ``MaxPool2d(3, 2, 1)`` in channels-last layout, where PyTorch's CPU kernel is about 9× faster. Same
    parameters, same state-dict keys, same result. (The trunk stays in the default layout: channels-last
    there gained little and, in float32 with PReLU, crashed oneDNN's backward in a test run.)
    """

    def __init__(self, widths: Sequence[int], relu_type: str) -> None:
        super().__init__()
        c0 = widths[0]
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, c0, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(c0),
            _activation(relu_type, c0),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),  # per frame, see the class docstring
        )
        self.trunk = ResNetTrunk(widths, relu_type)
        self.output_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        conv, norm, act, pool = self.frontend3D
        x = act(norm(conv(x)))  # (B, C0, T, H', W')
        t = x.shape[2]
        # frames folded into the batch: (B·T, C0, H', W'), pooled channels-last, trunk in the default layout
        x = x.transpose(1, 2).flatten(0, 1).contiguous(memory_format=torch.channels_last)
        x = self.trunk(pool(x).contiguous())  # (B·T, C_last)
        return x.view(b, t, -1).transpose(1, 2)


class SubModel(nn.Module):
    """Per-modality frontend: optional ResNet, then Linear(in → D). (B, F, T) or video → (B, D, T)."""

    def __init__(self, input_dim: int, embed_dim: int, resnet: ResEncoder | None = None) -> None:
        super().__init__()
        self.resnet = resnet
        self.proj = nn.Linear(input_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resnet is not None:
            x = self.resnet(x)
        return self.proj(x.transpose(1, 2)).transpose(1, 2)


# --------------------------------------------------------------------------------------------------
# transformer encoder (fairseq wav2vec2 TransformerEncoder, layer_norm_first)


class WeightNormConv1d(nn.Conv1d):
    """Conv1d with fairseq-style weight norm over ``dim=2``: weight = g · v / ‖v‖ (norm over dims 0, 1).

    Parameters are named ``weight_g`` (1, 1, K) and ``weight_v`` (out, in/groups, K) as in the checkpoint.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=groups)
        weight = self.weight
        del self.weight
        self.weight_v = nn.Parameter(weight.detach().clone())
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel_size))
        self.reset_weight_norm()

    def reset_weight_norm(self) -> None:
        """g = ‖v‖, so that the initial weight equals v (what ``nn.utils.weight_norm`` does)."""
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.weight_v
        weight = v * (self.weight_g / v.norm(dim=(0, 1), keepdim=True))
        return self._conv_forward(x, weight, self.bias)


class SamePad(nn.Module):
    """Drop the extra last frame an even-kernel ``padding=K//2`` convolution produces."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : -self.remove] if self.remove else x


class SelfAttention(nn.Module):
    """Multi-head self-attention with fairseq parameter names, via ``scaled_dot_product_attention``.

    Optional LoRA on Q and V with the reference semantics: ``q = q_proj(x) + 2·up_Q(down_Q(x))`` (then
    the usual head_dim^-0.5 scaling), ``v`` likewise; ``lora_down_*`` (r, D) start at zero.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.lora_scale = 0.0  # 0: no LoRA modules

    def add_lora(self, rank: int, scale: float = LORA_SCALE) -> None:
        """Attach ``lora_{down,up}_{Q,V}`` (no bias); down zero-initialised, up kaiming-uniform(a=√5)."""
        if self.lora_scale:
            return
        d = self.embed_dim
        factory = {"device": self.q_proj.weight.device, "dtype": self.q_proj.weight.dtype}
        for name in ("Q", "V"):
            down = nn.Linear(d, rank, bias=False, **factory)
            up = nn.Linear(rank, d, bias=False, **factory)
            nn.init.zeros_(down.weight)
            nn.init.kaiming_uniform_(up.weight, a=math.sqrt(5))
            setattr(self, f"lora_down_{name}", down)
            setattr(self, f"lora_up_{name}", up)
        self.lora_scale = scale

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, D); attn_mask: (B, 1, 1, T), True = attend (not padding). Returns (B, T, D)."""
        b, t, d = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.lora_scale:
            q = q + self.lora_scale * self.lora_up_Q(self.lora_down_Q(x))
            v = v + self.lora_scale * self.lora_up_V(self.lora_down_V(x))
        q, k, v = (z.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    """fairseq ``TransformerSentenceEncoderLayer``: pre-LN (``layer_norm_first``) or post-LN."""

    def __init__(self, arch: AVHubertArch) -> None:
        super().__init__()
        d = arch.encoder_embed_dim
        self.self_attn = SelfAttention(d, arch.encoder_attention_heads, arch.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, arch.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(arch.encoder_ffn_embed_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.activation = _ACTIVATIONS[arch.activation_fn]
        self.dropout1 = nn.Dropout(arch.dropout)
        self.dropout2 = nn.Dropout(arch.activation_dropout)
        self.dropout3 = nn.Dropout(arch.dropout)
        self.layer_norm_first = arch.layer_norm_first

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout3(self.fc2(self.dropout2(self.activation(self.fc1(x)))))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, D); attn_mask: (B, 1, 1, T), True = attend. Returns (B, T, D)."""
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), attn_mask))
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.dropout1(self.self_attn(x, attn_mask)))
        return self.final_layer_norm(x + self._ffn(x))


class TransformerEncoder(nn.Module):
    """Convolutional positional embedding + transformer layers (fairseq wav2vec2 ``TransformerEncoder``)."""

    def __init__(self, arch: AVHubertArch) -> None:
        super().__init__()
        d = arch.encoder_embed_dim
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(d, arch.conv_pos, arch.conv_pos_groups), SamePad(arch.conv_pos), nn.GELU()
        )
        self.layers = nn.ModuleList(EncoderLayer(arch) for _ in range(arch.encoder_layers))
        self.layer_norm = nn.LayerNorm(d)
        self.layer_norm_first = arch.layer_norm_first
        self.dropout = nn.Dropout(arch.dropout)
        self.layerdrop = arch.encoder_layerdrop

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, output_layer: int | None = None
    ) -> torch.Tensor:
        """x: (B, T, D); padding_mask: (B, T), True = padding; ``output_layer`` is 1-based.

        With ``output_layer`` the output of that layer is returned without the final LayerNorm.
        """
        attn_mask = None
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
            if padding_mask.any():  # an all-valid batch keeps the fastest SDPA kernels available
                attn_mask = ~padding_mask[:, None, None, :]
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        last = len(self.layers) if output_layer is None else output_layer
        for layer in self.layers[:last]:
            if self.training and self.layerdrop > 0 and torch.rand(()).item() < self.layerdrop:
                continue
            x = layer(x, attn_mask)
        if self.layer_norm_first and output_layer is None:
            x = self.layer_norm(x)
        return x


# --------------------------------------------------------------------------------------------------
# the model


class AVHubert(nn.Module):
    """AV-HuBERT encoder (fairseq ``AVHubertModel`` minus the pretraining heads).

    Build with :meth:`from_fairseq` (a checkpoint file) or :meth:`from_config` (random init, also on
    the meta device); encode with :meth:`extract_finetune`.
    """

    def __init__(self, arch: AVHubertArch) -> None:
        super().__init__()
        self.arch = arch
        d = arch.encoder_embed_dim
        resnet = ResEncoder(arch.resnet_widths, arch.resnet_relu_type)
        self.feature_extractor_audio = SubModel(arch.audio_feat_dim, d)
        self.feature_extractor_video = SubModel(resnet.output_dim, d, resnet)
        fused = 2 * d if arch.modality_fuse == "concat" else d
        self.layer_norm = nn.LayerNorm(fused)
        self.post_extract_proj = nn.Linear(fused, d) if fused != d else None
        self.dropout_input = nn.Dropout(arch.dropout_input)
        self.encoder = TransformerEncoder(arch)

    @property
    def embed_dim(self) -> int:
        return self.arch.encoder_embed_dim

    # ---- construction

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any] | AVHubertArch) -> AVHubert:
        """Random init from a ``cfg['model']``-style dict (or an :class:`AVHubertArch`).

        Works under ``with torch.device("meta"):`` for weight-free parameter counting.
        """
        if isinstance(model_cfg, AVHubertArch):
            arch = model_cfg
        else:
            if model_cfg.get("_name", "av_hubert") != "av_hubert":
                raise ValueError(f"not an AV-HuBERT model config: _name is {model_cfg['_name']!r}")
            arch = AVHubertArch.from_model_cfg(model_cfg)
        model = cls(arch)
        model.reset_parameters()
        return model

    def reset_parameters(self) -> None:
        """The reference initialisation: BERT-style transformer, He-normal ResNet convs."""
        for m in self.feature_extractor_video.resnet.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.encoder.modules():  # fairseq init_bert_params
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        conv = self.encoder.pos_conv[0]
        nn.init.normal_(conv.weight_v, 0.0, math.sqrt(4.0 / (self.arch.conv_pos * self.embed_dim)))
        nn.init.zeros_(conv.bias)
        conv.reset_weight_norm()

    @classmethod
    def from_fairseq(cls, path: str | Path) -> AVHubert:
        """Load a fairseq AV-HuBERT checkpoint (pretrained ``av_hubert`` or fine-tuned ``av_hubert_seq2seq``).

        Raises :class:`CheckpointError` for anything else (wrong model, missing/unexpected keys, corrupt file).
        """
        return cls.from_checkpoint_dict(read_fairseq_checkpoint(path), source=str(path))

    @classmethod
    def from_checkpoint_dict(cls, ckpt: Mapping[str, Any], source: str = "<checkpoint>") -> AVHubert:
        """Build from an already loaded fairseq checkpoint dict (``cfg`` may still hold stand-in objects)."""
        model_cfg, state = _avhubert_cfg_and_state(ckpt, source)
        try:
            arch = AVHubertArch.from_model_cfg(model_cfg)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: unsupported AV-HuBERT configuration: {e}") from e
        with torch.device("meta"):  # no random init for weights that are about to be replaced
            model = cls(arch)
        model.load_fairseq_state_dict(state, source=source)
        logger.info(
            "loaded AV-HuBERT from %s: %d layers, dim %d, %.1fM parameters",
            source,
            arch.encoder_layers,
            arch.encoder_embed_dim,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
        return model

    def load_fairseq_state_dict(
        self, state: Mapping[str, torch.Tensor], source: str = "<state dict>"
    ) -> None:
        """Load fairseq ``AVHubertModel`` weights (pretraining-only keys are skipped; LoRA keys allowed).

        Tensors are assigned, not copied, so a model built on the meta device gets real weights.
        """
        state = {_rename_weight_norm(k): v for k, v in state.items() if not k.startswith(PRETRAINING_KEYS)}
        expected = self.state_dict(keep_vars=True)
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"{source}: state dict does not match the AV-HuBERT architecture of its cfg; "
                f"missing keys: {_short_list(missing)}; unexpected keys: {_short_list(unexpected)}"
            )
        wrong = [
            f"{k}: {tuple(v.shape)} vs expected {tuple(expected[k].shape)}"
            for k, v in state.items()
            if not isinstance(v, torch.Tensor) or v.shape != expected[k].shape
        ]
        if wrong:
            raise CheckpointError(f"{source}: tensor shape mismatch: {_short_list(wrong)}")
        dtype = next(p.dtype for p in expected.values() if p.is_floating_point())
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        self.load_state_dict(state, strict=True, assign=True)

    # ---- LoRA

    def enable_lora(self, rank: int | None = None, scale: float = LORA_SCALE) -> None:
        """Add LoRA to Q and V of every layer (rank default round(D/16), scale 2, as the reference)."""
        for layer in self.encoder.layers:
            layer.self_attn.add_lora(rank or self.arch.lora_rank, scale)

    def lora_parameters(self) -> list[nn.Parameter]:
        """The LoRA adapter parameters (empty without :meth:`enable_lora`)."""
        return [p for n, p in self.named_parameters() if ".lora_" in n]

    def load_lora_state_dict(self, state: Mapping[str, torch.Tensor], source: str = "<LoRA weights>") -> None:
        """Load LoRA weights with the reference key names (``encoder.layers.N.self_attn.lora_down_Q.weight``,
        ``lora_up_Q``, ``lora_down_V``, ``lora_up_V``); enables LoRA (rank from the weights) if needed."""
        if not self.lora_parameters():
            downs = [v for k, v in state.items() if k.endswith("lora_down_Q.weight")]
            self.enable_lora(rank=downs[0].shape[0] if downs else None)
        own = {n for n, _ in self.named_parameters() if ".lora_" in n}
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        if missing or unexpected:
            raise CheckpointError(
                f"{source}: LoRA keys do not match; missing: {_short_list(missing)}; "
                f"unexpected: {_short_list(unexpected)}"
            )
        self.load_state_dict(dict(state), strict=False)

    # ---- forward

    def _features(self, extractor: SubModel, x: torch.Tensor) -> torch.Tensor:
        mult = self.arch.feature_grad_mult
        if mult <= 0:
            with torch.no_grad():
                return extractor(x)
        feats = extractor(x)
        return _GradMultiply.apply(feats, mult) if mult != 1.0 and torch.is_grad_enabled() else feats

    def extract_finetune(
        self,
        video: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        output_layer: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode video and/or audio (fairseq ``AVHubertModel.extract_finetune``).

        video: (B, 1, T, H, W) normalised gray crops, zeros after each length; audio: (B, F, T) stacked
        log filterbanks; padding_mask: (B, T) True = padding; output_layer: 1-based layer to stop after
        (its output is returned without the final LayerNorm). Returns features (B, T, D) and the mask.
        """
        if video is None and audio is None:
            raise ValueError("extract_finetune needs video, audio or both")
        feats_video = None if video is None else self._features(self.feature_extractor_video, video)
        feats_audio = None if audio is None else self._features(self.feature_extractor_audio, audio)
        if feats_audio is None:
            feats_audio = torch.zeros_like(feats_video)
        if feats_video is None:
            feats_video = torch.zeros_like(feats_audio)
        if self.arch.modality_fuse == "concat":
            features = torch.cat([feats_audio, feats_video], dim=1)
        else:
            features = feats_audio + feats_video
        features = self.layer_norm(features.transpose(1, 2))  # (B, T, 2D)
        if padding_mask is not None:
            padding_mask = _downsample_padding_mask(padding_mask, features.shape[1])
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        features = self.dropout_input(features)
        return self.encoder(features, padding_mask, output_layer), padding_mask


def _downsample_padding_mask(padding_mask: torch.Tensor, frames: int) -> torch.Tensor:
    """fairseq ``forward_padding_mask``: (B, T') → (B, T), a frame is padding if all its samples are."""
    extra = padding_mask.shape[1] % frames
    if extra:
        padding_mask = padding_mask[:, :-extra]
    return padding_mask.view(padding_mask.shape[0], frames, -1).all(-1)


def _rename_weight_norm(key: str) -> str:
    # checkpoints written with torch.nn.utils.parametrizations.weight_norm
    return key.replace(".parametrizations.weight.original0", ".weight_g").replace(
        ".parametrizations.weight.original1", ".weight_v"
    )


def _short_list(items: Sequence[str], limit: int = 20) -> str:
    if not items:
        return "none"
    more = f" … and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# --------------------------------------------------------------------------------------------------
# restricted checkpoint loading


class FairseqDictionary:
    """Stand-in for ``fairseq.data.dictionary.Dictionary``: only receives the pickled attributes."""

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class _OmegaConfObject:
    """Stand-in for omegaconf objects: the pickled state is kept as data, never interpreted as code."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def _field(self, name: str) -> Any:
        state = self.__dict__.get("state")
        return state.get(name) if isinstance(state, dict) else None


class OmegaDictConfig(_OmegaConfObject):
    """Stand-in for ``omegaconf.DictConfig`` (content under ``_content``)."""


class OmegaListConfig(_OmegaConfObject):
    """Stand-in for ``omegaconf.ListConfig`` (content under ``_content``)."""


class OmegaValueNode(_OmegaConfObject):
    """Stand-in for omegaconf value nodes (``AnyNode``, ``StringNode``, …; value under ``_val``)."""


class OmegaMetadata(_OmegaConfObject):
    """Stand-in for omegaconf ``Metadata`` / ``ContainerMetadata`` (ignored)."""


class TypeRef:
    """A type referenced by a pickle only as a value (omegaconf ``ref_type`` / ``object_type``).

    Calling it returns its argument (how enum members are unpickled); it cannot create objects.
    """

    def __new__(cls, *args: Any) -> TypeRef:
        if isinstance(cls, TypeRef):  # the unpickler trying to instantiate the referenced type
            raise pickle.UnpicklingError(f"Unsupported object: an instance of {cls.name} would be created")
        return super().__new__(cls)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any) -> Any:
        return args[0] if len(args) == 1 else None

    def __repr__(self) -> str:
        return f"TypeRef({self.name})"


def _defaultdict(*args: Any) -> dict:
    return {}  # omegaconf's resolver cache: contents irrelevant


_OMEGA_NODES = (
    "AnyNode",
    "StringNode",
    "IntegerNode",
    "FloatNode",
    "BooleanNode",
    "EnumNode",
    "BytesNode",
    "PathNode",
)
_TYPE_REFS = (
    "builtins.dict",
    "builtins.list",
    "builtins.int",
    "builtins.float",
    "builtins.str",
    "builtins.bool",
)
#: full pickle name → stand-in; the only non-tensor globals a fairseq checkpoint may reference
SAFE_GLOBALS: dict[str, Any] = {
    "fairseq.data.dictionary.Dictionary": FairseqDictionary,
    "omegaconf.dictconfig.DictConfig": OmegaDictConfig,
    "omegaconf.listconfig.ListConfig": OmegaListConfig,
    "omegaconf.base.Metadata": OmegaMetadata,
    "omegaconf.base.ContainerMetadata": OmegaMetadata,
    "collections.defaultdict": _defaultdict,
    **{f"omegaconf.nodes.{n}": OmegaValueNode for n in _OMEGA_NODES},
    **{name: TypeRef(name) for name in (*_TYPE_REFS, "typing.Any")},
}
#: modules whose other globals are accepted as passive type references (omegaconf structured configs)
_TYPE_REF_MODULES = ("fairseq.", "omegaconf.", "avhubert.", "typing.", "enum.")


def torch_load_restricted(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` with the fairseq stand-ins allowlisted; no pickled code runs.

    Returns the raw object (stand-ins left in place; see :func:`to_plain`). Raises :class:`CheckpointError`.
    """
    return safe_load.load(
        path, allow=SAFE_GLOBALS, type_ref=TypeRef, type_ref_modules=_TYPE_REF_MODULES, error=CheckpointError
    )


def to_plain(obj: Any) -> Any:
    """Convert loaded stand-ins (omegaconf configs, fairseq Dictionary) into plain dicts/lists/values."""
    if isinstance(obj, OmegaDictConfig | OmegaListConfig):
        content = obj._field("_content")
        return to_plain(content)
    if isinstance(obj, OmegaValueNode):
        return to_plain(obj._field("_val"))
    if isinstance(obj, FairseqDictionary):
        return to_plain(obj.as_dict())
    if isinstance(obj, TypeRef):
        return obj.name
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def read_fairseq_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a fairseq checkpoint safely: ``cfg`` and ``task_state`` as plain data, ``model`` tensors.

    Raises :class:`CheckpointError` naming the file when it is unreadable or not a fairseq checkpoint.
    """
    raw = torch_load_restricted(path)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (a {type(raw).__name__}, not a dict)")
    if "model" not in raw or not ("cfg" in raw or "args" in raw):
        if raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise CheckpointError(
                f"{path}: a bare state dict, not a fairseq checkpoint (no 'cfg' to tell the architecture)"
            )
        raise CheckpointError(
            f"{path}: not a fairseq checkpoint (top-level keys {sorted(map(str, raw))[:10]})"
        )
    return {k: (v if k == "model" else to_plain(v)) for k, v in raw.items()}


def _avhubert_cfg_and_state(
    ckpt: Mapping[str, Any], source: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    cfg = to_plain(ckpt.get("cfg"))
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("model"), Mapping):
        raise CheckpointError(
            f"{source}: checkpoint has no cfg['model'] (only fairseq/hydra checkpoints are supported)"
        )
    model_cfg = cfg["model"]
    name = model_cfg.get("_name")
    if name not in MODEL_NAMES:
        raise CheckpointError(
            f"{source}: cfg.model._name is {name!r}, not an AV-HuBERT model ({sorted(MODEL_NAMES)})"
        )
    state = ckpt.get("model")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: checkpoint 'model' entry is not a state dict")
    prefix = MODEL_NAMES[name]
    if prefix:  # fine-tuned model: the pretraining cfg sits in w2v_args, the weights under the prefix
        w2v_args = model_cfg.get("w2v_args")
        if not isinstance(w2v_args, Mapping) or not isinstance(w2v_args.get("model"), Mapping):
            raise CheckpointError(f"{source}: {name} checkpoint without cfg.model.w2v_args.model")
        model_cfg = w2v_args["model"]
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(model_cfg), dict(state)


# --------------------------------------------------------------------------------------------------
# registry entry


@dataclass
class AVHubertOptions:
    """``EncoderConfig.options`` for ``kind: avhubert``.

    lora: LoRA on attention Q and V (rank D/16, scale 2), trainable even when the encoder is frozen.
    output_layer: stop after this (1-based) layer, without the final LayerNorm; None = all layers.
    resnet_widths: narrower ResNet trunk for randomly initialised encoders (``source: null``).
    """

    lora: bool = False
    output_layer: int | None = None
    resnet_widths: list[int] | None = None


class AVHubertEncoder(Encoder):
    """AV-HuBERT behind the encoder interface: 16 kHz waveform and/or mouth crops → 25 Hz features.

    Audio is turned into stacked log filterbanks here. With both modalities, each waveform is cut or
    zero-padded to 640 samples per video frame before the features (as the reference data pipeline
    does), so audio and video frames align and the output lengths are the video lengths.
    The wrapped model is ``self.model`` (state-dict keys ``model.<fairseq key>``).
    """

    accepts = ("audio", "video")
    frame_rate = 25.0

    def __init__(self, model: AVHubert, options: AVHubertOptions) -> None:
        super().__init__()
        self.model = model
        self.options = options
        self.output_dim = model.embed_dim
        if options.lora:
            model.enable_lora()

    def lora_parameters(self) -> list[nn.Parameter]:
        return self.model.lora_parameters()

    def forward(
        self, inputs: Mapping[str, torch.Tensor], lengths: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs: ``audio`` (B, N) at 16 kHz and/or ``video`` (B, T_v, 1, H, W); lengths (B,) each.

        Returns features (B, T, D) and lengths (B,) at 25 Hz.
        """
        unknown = set(inputs) - set(self.accepts)
        if unknown or not inputs:
            raise ValueError(f"AV-HuBERT takes {self.accepts}, got {sorted(inputs)}")
        dtype = next(self.model.parameters()).dtype
        video, audio = inputs.get("video"), inputs.get("audio")
        video_in = audio_in = None
        if video is not None:
            out_lengths = lengths["video"].to(video.device)
            frames = video.shape[1]
            valid = torch.arange(frames, device=video.device) < out_lengths[:, None]
            video_in = (video * valid[:, :, None, None, None]).transpose(1, 2).to(dtype)  # (B, 1, T, H, W)
        if audio is not None:
            audio_lengths = lengths["audio"].to(audio.device)
            if video is not None:
                samples = SAMPLES_PER_FRAME * out_lengths.to(audio.device)
                wav = F.pad(audio, (0, max(0, SAMPLES_PER_FRAME * frames - audio.shape[1])))
                wav = wav[:, : SAMPLES_PER_FRAME * frames]
                keep = (
                    torch.arange(wav.shape[1], device=wav.device)
                    < torch.minimum(audio_lengths, samples)[:, None]
                )
                feats, _ = avhubert_audio_features(wav * keep, samples)
                feats = F.pad(feats, (0, 0, 0, frames - feats.shape[1]))
            else:
                feats, out_lengths = avhubert_audio_features(audio, audio_lengths)
            audio_in = feats.transpose(1, 2).to(dtype)  # (B, 104, T)
        total = (video_in if video_in is not None else audio_in).shape[2]
        padding_mask = torch.arange(total, device=out_lengths.device) >= out_lengths[:, None]
        feats, _ = self.model.extract_finetune(
            video=video_in, audio=audio_in, padding_mask=padding_mask, output_layer=self.options.output_layer
        )
        return feats, out_lengths


@ENCODERS.register("avhubert")
def build_avhubert(cfg: EncoderConfig) -> AVHubertEncoder:
    """``source``: a fairseq checkpoint; ``source: null``: random init from the ``arch`` JSON."""
    options: AVHubertOptions = parse_options(AVHubertOptions, cfg.options, cfg.kind)
    if cfg.source is not None:
        if options.resnet_widths is not None:
            raise ValueError("avhubert option resnet_widths only applies to random init (source: null)")
        model = AVHubert.from_fairseq(cfg.source)
    else:
        arch = find_arch(cfg.arch)
        with arch.open() as f:
            model_cfg = json.load(f)
        if options.resnet_widths is not None:
            model_cfg = {**model_cfg, "resnet_widths": list(options.resnet_widths)}
        model = AVHubert.from_config(model_cfg)
    model = model.to(torch_dtype(cfg.dtype))
    n_layers = model.arch.encoder_layers
    if options.output_layer is not None and not 1 <= options.output_layer <= n_layers:
        raise ValueError(f"avhubert output_layer must be in 1..{n_layers}, got {options.output_layer}")
    return AVHubertEncoder(model, options)
