"""WavLM encoder (Hugging Face ``WavLMModel``): raw 16 kHz waveform → 50 frames/s, width ``hidden_size``.

The waveform is layer-normalised per utterance first (as the reference's audio pipeline does for WavLM).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from transformers import WavLMConfig, WavLMModel

from llama_avsr.config import EncoderConfig, find_arch, torch_dtype
from llama_avsr.models.encoders.base import ENCODERS, Encoder, layer_norm_waveform, parse_options


@dataclass
class WavLMOptions:
    #: take the output of this transformer layer instead of the last one (None = last)
    output_layer: int | None = None


class WavLMEncoder(Encoder):
    accepts = ("audio",)
    frame_rate = 50.0

    def __init__(self, model: WavLMModel, options: WavLMOptions) -> None:
        super().__init__()
        self.model = model
        self.options = options
        self.output_dim = model.config.hidden_size

    def output_lengths(self, samples: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(samples).clamp(min=1)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], lengths: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = lengths["audio"]
        wav = layer_norm_waveform(inputs["audio"], n)
        mask = (torch.arange(wav.shape[1], device=wav.device)[None] < n[:, None]).long()
        dtype = next(self.model.parameters()).dtype
        want_layer = self.options.output_layer
        out = self.model(wav.to(dtype), attention_mask=mask, output_hidden_states=want_layer is not None)
        feats = out.last_hidden_state if want_layer is None else out.hidden_states[want_layer]
        out_len = self.output_lengths(n)
        return feats[:, : int(out_len.max())], out_len


@ENCODERS.register("wavlm")
def build_wavlm(cfg: EncoderConfig) -> WavLMEncoder:
    opts = parse_options(WavLMOptions, cfg.options, cfg.kind)
    dtype = torch_dtype(cfg.dtype)
    if cfg.source is None:
        model = WavLMModel(WavLMConfig(**json.loads(find_arch(cfg.arch).read_text()))).to(dtype)
    else:  # a local directory or a hub id (no WavLM ships in a PyPI package)
        model = WavLMModel.from_pretrained(cfg.source, dtype=dtype)
    return WavLMEncoder(model, opts)
