"""Additive noise at an exact signal-to-noise ratio (babble noise augmentation of the paper).

SNR is defined as in torchaudio's ``add_noise`` (which the reference uses): signal power over the whole
utterance divided by the power of the noise segment actually added, in dB.  The noise segment starts at
a random offset into the noise track; a track shorter than the utterance is looped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from llama_avsr import media

log = logging.getLogger(__name__)


def mix_at_snr(speech: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``speech + a · noise`` with ``a`` chosen so that 10·log10(P_speech / P_{a·noise}) = ``snr_db``.

    speech, noise: (T,) with the same length.  Silent speech or silent noise is returned unchanged
    (no SNR can be met).  Returns (T,).
    """
    if speech.shape != noise.shape:
        raise ValueError(f"speech {tuple(speech.shape)} and noise {tuple(noise.shape)} differ in shape")
    p_speech = speech.double().pow(2).mean()
    p_noise = noise.double().pow(2).mean()
    if p_speech == 0 or p_noise == 0:
        return speech
    scale = torch.sqrt(p_speech / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (speech.double() + scale * noise.double()).to(speech.dtype)


def measure_snr(speech: torch.Tensor, mixture: torch.Tensor) -> float:
    """SNR in dB of ``mixture`` = speech + noise, given the clean ``speech``. (T,), (T,) → float"""
    noise = mixture.double() - speech.double()
    return 10.0 * math.log10(float(speech.double().pow(2).mean() / noise.pow(2).mean()))


def noise_segment(noise: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """A random ``length``-sample stretch of ``noise`` (T_n,), looped when the track is shorter. → (length,)"""
    n = noise.shape[0]
    if n == 0:
        raise ValueError("the noise track is empty")
    if n >= length:
        start = int(torch.randint(0, n - length + 1, (1,), generator=generator))
        return noise[start : start + length]
    start = int(torch.randint(0, n, (1,), generator=generator))
    idx = (torch.arange(length) + start) % n
    return noise[idx]


class NoiseError(RuntimeError):
    """The noise track cannot be used: fatal for the whole run, unlike one unreadable utterance."""


class NoiseSource:
    """A 16 kHz mono noise track, loaded lazily (in each worker process on first use).

    path: a noise file (any format PyAV reads; resampled to 16 kHz mono), or ``None`` for the project's
        synthetic babble, generated and cached on first use by ``llama_avsr.synth.babble``.
    track: which synthetic babble track ``None`` means: ``train`` or ``eval`` (disjoint talkers).
    """

    def __init__(self, path: str | Path | None = None, track: str = "train") -> None:
        self.path = Path(path) if path is not None else None
        self.track = track
        self._noise: torch.Tensor | None = None

    def __getstate__(self) -> dict:
        # workers load their own copy rather than receiving it pickled
        return {"path": self.path, "track": self.track, "_noise": None}

    def load(self) -> torch.Tensor:
        """The whole noise track, (T_n,) float32."""
        if self._noise is None:
            path = self.path
            if path is None:
                from llama_avsr.synth.babble import default_babble_path

                path = default_babble_path(self.track)
                log.info("using the synthetic %s babble noise %s", self.track, path)
            try:
                noise = torch.from_numpy(media.read_audio(path))
            except media.MediaError as e:
                raise NoiseError(f"noise track unusable: {e}") from e
            if float(noise.abs().max()) == 0.0:
                raise NoiseError(f"noise track unusable: {path} is silent")
            self._noise = noise
        return self._noise

    def __repr__(self) -> str:
        return f"NoiseSource({str(self.path) if self.path else f'synthetic {self.track} babble'})"


class AddNoise:
    """Mix noise at an SNR drawn uniformly from ``snrs`` (``None`` = leave clean). (T,) → (T,)"""

    def __init__(self, source: NoiseSource, snrs: Sequence[float | None]) -> None:
        if not snrs:
            raise ValueError("AddNoise needs at least one SNR level")
        self.source = source
        self.snrs = list(snrs)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        snr = self.snrs[int(torch.randint(0, len(self.snrs), (1,), generator=generator))]
        if snr is None or math.isinf(snr) or x.numel() == 0:
            return x
        seg = noise_segment(self.source.load(), x.shape[0], generator)
        return mix_at_snr(x, seg, float(snr))

    def __repr__(self) -> str:
        return f"AddNoise({self.source!r}, snrs={self.snrs})"
