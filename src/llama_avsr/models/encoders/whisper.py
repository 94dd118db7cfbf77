"""Whisper encoder (Hugging Face ``WhisperModel``), any size; encoder only.

Two ways to run it:

- ``pad_to_30s=True`` (default, the reference): the log-mel input is padded to Whisper's 30 s window,
  the whole window is encoded and the output is cut to the batch's audio length
  (``max(int(max_len / 16000 * 50), 25)`` frames, as the reference does);
- ``pad_to_30s=False``: only the true length is encoded (padded to the batch maximum, with an
  attention mask so that padding never changes a sample's features). Much faster for short
  utterances; features differ slightly from the padded ones (cosine ≈ 0.97 for tiny.en: `llama-avsr bench`'s whisper section, docs/performance.md).

Output: 50 frames/s, width ``d_model``. The waveform is first layer-normalised per utterance (the
reference's audio pipeline for Whisper); log-mel features are then computed in torch on the input's
device with the same filters and normalisation as ``WhisperFeatureExtractor``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

from llama_avsr.config import EncoderConfig, find_arch, torch_dtype
from llama_avsr.models.encoders.base import ENCODERS, Encoder, layer_norm_waveform, parse_options

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
#: waveform samples per encoder output frame (2 mel hops: conv2 has stride 2)
SAMPLES_PER_FRAME = 2 * HOP
CHUNK_SECONDS = 30
#: the reference keeps at least this many frames (0.5 s) after cutting the 30 s output
MIN_REFERENCE_FRAMES = 25


@dataclass
class WhisperOptions:
    pad_to_30s: bool = True


class LogMel(nn.Module):
    """Whisper's log-mel spectrogram in torch. (B, T) waveform → (B, n_mels, T // 160)."""

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        fe = WhisperFeatureExtractor(feature_size=n_mels)
        self.register_buffer("filters", torch.from_numpy(fe.mel_filters).float().T, persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        wav = wav.float()
        # zero past each length so padding is silence, exactly as the reference's zero-padded batch
        t = torch.arange(wav.shape[1], device=wav.device)
        wav = wav * (t[None] < lengths[:, None])
        stft = torch.stft(wav, N_FFT, HOP, window=self.window, return_complex=True)
        power = stft[..., :-1].abs() ** 2
        mel = self.filters @ power
        log_spec = mel.clamp(min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        return (log_spec + 4.0) / 4.0


class WhisperEncoder(Encoder):
    accepts = ("audio",)
    frame_rate = SAMPLE_RATE / SAMPLES_PER_FRAME

    def __init__(self, encoder: HFWhisperEncoder, options: WhisperOptions) -> None:
        super().__init__()
        self.encoder = encoder
        self.options = options
        self.output_dim = encoder.config.d_model
        self.log_mel = LogMel(encoder.config.num_mel_bins)
        self.max_frames = encoder.config.max_source_positions
        self.max_seconds = self.max_frames / self.frame_rate

    def output_lengths(self, samples: torch.Tensor) -> torch.Tensor:
        return (samples // SAMPLES_PER_FRAME).clamp(min=1, max=self.max_frames)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], lengths: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = lengths["audio"]
        wav = layer_norm_waveform(inputs["audio"], n)
        self._warn_if_cut(n)
        out_len = self.output_lengths(n)
        if self.options.pad_to_30s:
            wav = F.pad(wav, (0, max(0, CHUNK_SECONDS * SAMPLE_RATE - wav.shape[1])))
            wav = wav[:, : CHUNK_SECONDS * SAMPLE_RATE]
            keep = min(max(int(int(n.max()) / SAMPLE_RATE * 50), MIN_REFERENCE_FRAMES), self.max_frames)
            feats = self._encode(self.log_mel(wav, n), attention_mask=None, keep=keep)
            return feats, out_len.clamp(max=keep)
        # each sample is cut to its own frames (as if it were alone) so that batching never changes
        # its features: STFT edges, conv padding and attention all see only the sample itself
        t_max = int(out_len.max())
        mel = wav.new_zeros((wav.shape[0], self.log_mel.filters.shape[0], 2 * t_max))
        for i, frames in enumerate(out_len.tolist()):
            w = F.pad(wav[i : i + 1, : 2 * frames * HOP], (0, max(0, 2 * frames * HOP - int(n[i]))))
            mel[i, :, : 2 * frames] = self.log_mel(w, n[i : i + 1])[0]
        valid = torch.arange(t_max, device=wav.device)[None] < out_len[:, None]  # (B, T)
        return self._encode(mel, attention_mask=valid), out_len

    def _warn_if_cut(self, n: torch.Tensor) -> None:
        """Whisper has positions for ``max_source_positions`` frames (30 s): longer audio is cut, and
        that must never happen silently."""
        limit = self.max_frames * SAMPLES_PER_FRAME
        over = n > limit
        if bool(over.any()):
            log.warning(
                "Whisper encodes at most %.1f s of audio: %d input(s) of up to %.1f s are cut to their first "
                "%.1f s, the rest is not transcribed (split long recordings into segments first)",
                limit / SAMPLE_RATE,
                int(over.sum()),
                float(n.max()) / SAMPLE_RATE,
                limit / SAMPLE_RATE,
            )

    def _encode(
        self, mel: torch.Tensor, attention_mask: torch.Tensor | None, keep: int | None = None
    ) -> torch.Tensor:
        """The HF encoder's computation on any number of frames (HF insists on exactly 30 s).

        mel: (B, n_mels, 2T); attention_mask: (B, T) bool (True = valid) or None → (B, T, D), or
        (B, keep, D) when only the first ``keep`` frames are wanted: the last layer then computes only
        those rows (its keys and values still see every frame), the same math as cutting afterwards
        at a fraction of that layer's cost (30 s padding keeps 150 of 1500 frames for 3 s of audio).
        """
        enc = self.encoder
        dtype = enc.conv1.weight.dtype
        x = F.gelu(enc.conv1(mel.to(dtype)))
        if attention_mask is not None:  # zero past each length, like conv zero-padding of a lone sample
            x = x * attention_mask.repeat_interleave(2, dim=1)[:, None, : x.shape[2]].to(dtype)
        x = F.gelu(enc.conv2(x)).transpose(1, 2)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        mask = None
        if attention_mask is not None:
            mask = torch.zeros(attention_mask.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(~attention_mask, torch.finfo(x.dtype).min)[:, None, None, :]
        last = len(enc.layers) - 1 if keep is not None and keep < x.shape[1] else None
        for i, layer in enumerate(enc.layers):
            if i == last:
                x = _layer_first_rows(layer, x, mask, keep)
                continue
            x = layer(x, attention_mask=mask)
            x = x[0] if isinstance(x, tuple) else x
        return enc.layer_norm(x[:, :keep] if keep is not None else x)


def _layer_first_rows(
    layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, keep: int
) -> torch.Tensor:
    """One HF ``WhisperEncoderLayer`` computed for the first ``keep`` rows only (queries, feed-forward),
    attending to every row: the rows of the full layer's output, without computing the others."""
    p, training = layer.dropout, layer.training
    residual = x[:, :keep]
    h = layer.self_attn_layer_norm(x)
    if mask is not None:
        mask = mask[:, :, :keep]
    a = layer.self_attn(hidden_states=h[:, :keep], key_value_states=h, attention_mask=mask)[0]
    x = residual + F.dropout(a, p=p, training=training)
    residual = x
    h = layer.activation_fn(layer.fc1(layer.final_layer_norm(x)))
    h = layer.fc2(F.dropout(h, p=layer.activation_dropout, training=training))
    x = residual + F.dropout(h, p=p, training=training)
    if x.dtype == torch.float16:
        clamp = torch.finfo(x.dtype).max - 1000
        x = x.clamp(min=-clamp, max=clamp)
    return x


def load_whisper_encoder(source: str | None, arch: str | None, dtype: torch.dtype) -> HFWhisperEncoder:
    if source is None:
        config = WhisperConfig(**json.loads(find_arch(arch).read_text()))
        return HFWhisperEncoder(config).to(dtype)
    from llama_avsr.hub import resolve
    from llama_avsr.safe_load import check_pickled_weights

    path = resolve(source, "whisper")
    if not isinstance(path, str):  # a local folder: refuse a pickle that asks for code, naming the file
        check_pickled_weights(path)
    return WhisperModel.from_pretrained(str(path), dtype=dtype).get_encoder()


@ENCODERS.register("whisper")
def build_whisper(cfg: EncoderConfig) -> WhisperEncoder:
    opts = parse_options(WhisperOptions, cfg.options, cfg.kind)
    return WhisperEncoder(load_whisper_encoder(cfg.source, cfg.arch, torch_dtype(cfg.dtype)), opts)
