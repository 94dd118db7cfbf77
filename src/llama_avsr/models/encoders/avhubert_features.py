"""AV-HuBERT audio features in torch: 26-dim log Mel filterbanks at 100 Hz, stacked ×4 to 104 dims at 25 Hz.

This reproduces, batched and on any device, what the reference data pipeline does per utterance::

    feats = python_speech_features.logfbank(wav, samplerate=16000)   # (T100, 26), float64
    feats = stacker(feats, 4)                                         # (T25, 104), zero-padded to 4k
    feats = F.layer_norm(feats, feats.shape[1:])                      # per frame, no affine

``logfbank`` semantics (python_speech_features 0.6): pre-emphasis 0.97 (``y[0] = x[0]``), frames of 400
samples every 160 (25 ms / 10 ms), the last frame zero-padded, no window, power spectrum
``|rfft(frame, 512)|² / 512``, 26 triangular Mel filters on integer FFT bins, exact zeros replaced
by float64 eps, natural log.

Shapes: B batch, N samples (16 kHz), T100 frames at 100 Hz, T25 = ceil(T100 / 4) frames at 25 Hz.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_RATE = 16000
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_FFT = 512
N_FILTERS = 26
PREEMPHASIS = 0.97
STACK_ORDER = 4
#: 16 kHz samples per 25 Hz AV-HuBERT frame (= one video frame at 25 fps)
SAMPLES_PER_FRAME = HOP_LENGTH * STACK_ORDER
FEATURE_DIM = N_FILTERS * STACK_ORDER
_EPS = float(np.finfo(float).eps)


def num_fbank_frames(num_samples: int) -> int:
    """Number of 100 Hz log-fbank frames python_speech_features produces for ``num_samples`` samples."""
    if num_samples <= 0:
        return 0
    if num_samples <= WIN_LENGTH:
        return 1
    return 1 + math.ceil((num_samples - WIN_LENGTH) / HOP_LENGTH)


def num_feature_frames(num_samples: int | torch.Tensor) -> int | torch.Tensor:
    """Number of 25 Hz stacked frames for ``num_samples`` 16 kHz samples (640 samples per frame).

    ``640·k`` samples give exactly ``k`` frames. Accepts an int or an integer tensor of lengths (B,).
    """
    if isinstance(num_samples, torch.Tensor):
        return torch.div(
            num_fbank_frames_tensor(num_samples) + STACK_ORDER - 1, STACK_ORDER, rounding_mode="floor"
        )
    return -(-num_fbank_frames(int(num_samples)) // STACK_ORDER)


@functools.lru_cache(maxsize=4)
def _mel_filterbank_np(
    n_filters: int = N_FILTERS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """python_speech_features ``get_filterbanks`` (lowfreq 0, highfreq sr/2): (n_filters, n_fft//2+1)."""
    low_mel = 2595 * np.log10(1 + 0 / 700.0)
    high_mel = 2595 * np.log10(1 + (sample_rate / 2) / 700.0)
    mel_points = np.linspace(low_mel, high_mel, n_filters + 2)
    bins = np.floor((n_fft + 1) * (700 * (10 ** (mel_points / 2595.0) - 1)) / sample_rate)
    fb = np.zeros([n_filters, n_fft // 2 + 1])
    for j in range(n_filters):
        for i in range(int(bins[j]), int(bins[j + 1])):
            fb[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            fb[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return fb


def mel_filterbank(
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """The 26 triangular Mel filters of python_speech_features: (26, 257)."""
    return torch.tensor(_mel_filterbank_np(), dtype=dtype, device=device)


def log_fbank(
    waveform: torch.Tensor, lengths: torch.Tensor | None = None, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """python_speech_features ``logfbank`` (defaults, 16 kHz), batched.

    waveform: (B, N) or (N,) 16 kHz samples; lengths: (B,) valid samples (default N). Samples beyond a
    length are ignored, so each row equals ``logfbank`` of ``waveform[b, :lengths[b]]``.
    Returns ``(feats (B, T100, 26), frames (B,))`` in ``dtype``; frames beyond ``frames[b]`` are zero.
    """
    if waveform.dim() == 1:
        waveform = waveform.unsqueeze(0)
    if waveform.dim() != 2:
        raise ValueError(f"waveform must be (B, N) or (N,), got shape {tuple(waveform.shape)}")
    batch, n = waveform.shape
    device = waveform.device
    if lengths is None:
        lengths = torch.full((batch,), n, dtype=torch.long, device=device)
    lengths = lengths.to(device=device, dtype=torch.long)
    # pre-emphasis in the input's own precision (as numpy does for float32 input), then float64
    x = waveform if waveform.is_floating_point() else waveform.to(dtype)
    y = torch.cat([x[:, :1], x[:, 1:] - PREEMPHASIS * x[:, :-1]], dim=1).to(dtype)
    # zero everything from each length on: the reference pads the last frame with zeros
    y = y * (torch.arange(n, device=device) < lengths[:, None])

    frames100 = num_fbank_frames_tensor(lengths)
    t100 = max(int(frames100.max()) if batch else 0, 1)
    padded_len = (t100 - 1) * HOP_LENGTH + WIN_LENGTH
    y = F.pad(y, (0, max(padded_len - n, 0)))[:, :padded_len]
    frames = y.unfold(1, WIN_LENGTH, HOP_LENGTH)  # (B, T100, 400)
    spec = torch.fft.rfft(frames, n=N_FFT)
    power = (spec.real.square() + spec.imag.square()) / N_FFT  # (B, T100, 257)
    feats = power @ mel_filterbank(device, dtype).T  # (B, T100, 26)
    feats = torch.log(torch.where(feats == 0, torch.full_like(feats, _EPS), feats))
    valid = torch.arange(t100, device=device) < frames100[:, None]
    return feats * valid[..., None], frames100


def num_fbank_frames_tensor(num_samples: torch.Tensor) -> torch.Tensor:
    """Tensor version of :func:`num_fbank_frames`: (B,) samples → (B,) 100 Hz frames."""
    n = num_samples.long()
    n100 = 1 + torch.div(n - WIN_LENGTH + HOP_LENGTH - 1, HOP_LENGTH, rounding_mode="floor")
    n100 = torch.where(n > WIN_LENGTH, n100, 1)
    return torch.where(n > 0, n100, 0)


def stack_frames(
    feats: torch.Tensor, frames: torch.Tensor, order: int = STACK_ORDER
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``order`` consecutive frames, zero-padding the time axis to a multiple of ``order``.

    feats: (B, T, F) with zeros beyond ``frames`` (B,). Returns ``(B, ceil(T/order), F·order)`` and the
    stacked lengths ``ceil(frames/order)`` — per sample exactly the reference ``stacker``.
    """
    b, t, f = feats.shape
    pad = (-t) % order
    feats = F.pad(feats, (0, 0, 0, pad))
    stacked = feats.reshape(b, (t + pad) // order, order * f)
    return stacked, torch.div(frames + order - 1, order, rounding_mode="floor")


def avhubert_audio_features(
    waveform: torch.Tensor, lengths: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """AV-HuBERT audio input: stacked, per-frame layer-normed log filterbanks.

    waveform: (B, N) or (N,) 16 kHz; lengths: (B,) samples. Returns ``(feats (B, T25, 104), frames (B,))``
    where frames = :func:`num_feature_frames`; frames beyond a sample's length are zero.
    The encoder takes ``feats.transpose(1, 2)`` = (B, 104, T25).
    """
    fbank, frames100 = log_fbank(waveform, lengths)
    stacked, frames25 = stack_frames(fbank, frames100)
    normed = F.layer_norm(stacked, stacked.shape[-1:])
    valid = torch.arange(stacked.shape[1], device=stacked.device) < frames25[:, None]
    return (normed * valid[..., None]).to(out_dtype), frames25
