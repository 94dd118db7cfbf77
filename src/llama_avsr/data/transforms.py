"""Augmentation pipelines as torch ops on single utterances (the paper's recipe, after auto_avsr).

Every step is a callable ``step(x, generator) -> x``; randomness comes only from the generator passed
in, so a pipeline is reproducible given the generator's seed (the dataset keeps one per worker).

Pipelines, chosen by (split, modality) through :func:`build_pipeline`:

=====================  ==================================================================================
video, train           uint8 (T, H, W) → [0, 1] → random crop 88 → adaptive time mask (10 per 25 frames)
                       → normalise (0.421, 0.165) → (T, 1, 88, 88)
video, eval            same with a centre crop and no time mask
audio, train           (T,) → adaptive time mask (6400 per 16000 samples) → noise at an SNR from
                       ``train_snrs``
(time masks: for the modalities in ``train_time_masks``, all by default)
audio, eval            (T,) → noise at ``decode_snr_target`` (when set; from the evaluation noise track,
                       not the training one)
=====================  ==================================================================================

Frames are gray already (the corpus stores gray mouth crops and the reader decodes to gray). The audio
stays a raw waveform: each encoder normalises its own input (Whisper and WavLM layer-normalise the
waveform, AV-HuBERT computes normalised filterbanks), so one batch serves every encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from llama_avsr.data.config import DataConfig
from llama_avsr.data.noise import AddNoise, NoiseSource

Step = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

#: mouth crop size fed to the video encoder
CROP_SIZE = 88
#: gray-level statistics of LRS3 mouth crops (auto_avsr / AV-HuBERT)
VIDEO_MEAN, VIDEO_STD = 0.421, 0.165
#: adaptive time mask: up to ``window`` steps masked per ``stride`` steps (25 fps video; 16 kHz audio)
VIDEO_MASK = (10, 25)
AUDIO_MASK = (6400, 16000)


def _randint(high: int, generator: torch.Generator) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(0, high, (1,), generator=generator))


@dataclass(frozen=True)
class ToUnitRange:
    """uint8 [0, 255] → float32 [0, 1]. Any shape."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x.float().div_(255.0)


@dataclass(frozen=True)
class Crop:
    """Spatial crop of ``size``×``size``, the same window for every frame. (T, H, W) → (T, size, size)

    random: a uniformly random window (train), else the centre one (eval; the larger half of an odd
    margin goes right/bottom, as torchvision's CenterCrop).
    """

    size: int = CROP_SIZE
    random: bool = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h < self.size or w < self.size:
            raise ValueError(f"frames of {h}×{w} are smaller than the {self.size}×{self.size} crop")
        if self.random:
            top, left = _randint(h - self.size + 1, generator), _randint(w - self.size + 1, generator)
        else:
            top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        return x[..., top : top + self.size, left : left + self.size]


@dataclass(frozen=True)
class AdaptiveTimeMask:
    """Zero ``ceil(T / stride)`` random spans along time, each of a uniform width in [0, window).

    The number of masks grows with the length (auto_avsr's ``AdaptiveTimeMask(window, stride)``);
    masks may overlap.  The reference draws the span start from an independent width and clips the span
    at the end; here the start is drawn so the span fits, same width distribution.  (T, …) → (T, …)
    """

    window: int
    stride: int

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        t = x.shape[0]
        n_mask = -(-t // self.stride)
        if n_mask == 0:
            return x
        widths = torch.randint(0, self.window, (n_mask,), generator=generator).tolist()
        out = x.clone()
        for width in widths:
            if width == 0 or width >= t:
                continue
            start = _randint(t - width, generator)
            out[start : start + width] = 0
        return out


@dataclass(frozen=True)
class Normalize:
    """(x − mean) / std. Any shape."""

    mean: float = VIDEO_MEAN
    std: float = VIDEO_STD

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class AddChannel:
    """(T, H, W) → (T, 1, H, W)."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x.unsqueeze(1)


class Pipeline:
    """Steps applied in order: ``pipeline(x, generator)``."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for step in self.steps:
            x = step(x, generator)
        return x

    def __repr__(self) -> str:
        return "Pipeline(" + ", ".join(repr(s) for s in self.steps) + ")"


def video_pipeline(train: bool, time_mask: bool = True) -> Pipeline:
    """uint8 (T, H, W) gray → float32 (T, 1, 88, 88) normalised. ``time_mask``: in training."""
    steps: list[Step] = [ToUnitRange(), Crop(CROP_SIZE, random=train)]
    if train and time_mask:
        steps.append(AdaptiveTimeMask(*VIDEO_MASK))
    return Pipeline([*steps, Normalize(VIDEO_MEAN, VIDEO_STD), AddChannel()])


def audio_pipeline(
    train: bool,
    noise: NoiseSource | None,
    snrs: Sequence[float | None] = (),
    time_mask: bool = True,
) -> Pipeline:
    """float32 (T,) 16 kHz → (T,).  Noise is added when ``noise`` is given and ``snrs`` is non-empty;
    ``time_mask``: in training."""
    steps: list[Step] = []
    if train and time_mask:
        steps.append(AdaptiveTimeMask(*AUDIO_MASK))
    if noise is not None and snrs and any(s is not None for s in snrs):
        steps.append(AddNoise(noise, snrs))
    return Pipeline(steps)


def build_pipeline(split: str, modality: str, cfg: DataConfig, noise: NoiseSource | None = None) -> Pipeline:
    """The pipeline for ``split`` (``train``; ``val``/``test`` = eval) and ``modality``; a modality not in
    ``cfg.train_augment`` gets the clean eval pipeline in training too.

    noise: the noise track to use; by default the split's (:meth:`DataConfig.noise_for`: training
        ``cfg.noise_file``, validation/test ``cfg.eval_noise_file``, or the synthetic babble track of
        each, loaded only when a noisy SNR is actually drawn).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}")
    # a modality left out of `train_augment` trains on the clean evaluation pipeline
    train = split == "train" and modality in cfg.train_augment
    mask = modality in cfg.train_time_masks
    if modality == "video":
        return video_pipeline(train, mask)
    if modality != "audio":
        raise ValueError(f"unknown modality {modality!r}")
    snrs: list[float | None] = (
        list(cfg.train_snrs) if train else [None if split == "train" else cfg.decode_snr_target]
    )
    if noise is None:
        noise = NoiseSource(*cfg.noise_for(split))
    return audio_pipeline(train, noise, snrs, mask)


def build_transforms(split: str, modalities: Sequence[str], cfg: DataConfig) -> dict[str, Pipeline]:
    """One pipeline per modality (see :func:`build_pipeline`), sharing one noise source."""
    noise = NoiseSource(*cfg.noise_for(split))
    return {m: build_pipeline(split, m, cfg, noise) for m in modalities}
