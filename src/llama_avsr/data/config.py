"""Data configuration: where the corpus is, how batches are formed, augmentation noise, error policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: training SNRs of the paper in dB; ``None`` = clean (the reference uses 999999 dB for it)
PAPER_TRAIN_SNRS: tuple[float | None, ...] = (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0, None)

SPLITS: tuple[str, ...] = ("train", "val", "test")


def check_blank_probabilities(where: str, probs: dict[str, float]) -> None:
    """``probs`` (modality → probability that it is blanked, one modality at most per draw) must be in
    [0, 1) and sum to less than 1; ``where`` names the setting in the error."""
    if any(not 0.0 <= p < 1.0 for p in probs.values()) or sum(probs.values()) >= 1.0:
        raise ValueError(f"{where}: probabilities in [0, 1) summing to less than 1, got {probs}")


@dataclass
class DataConfig:
    """Corpus, batching and augmentation settings.

    root: corpus root, ``<root>/<dataset_name>/<rel_path>.mp4`` (+ ``.wav`` beside it).
    train_csv / val_csv / test_csv: label CSVs (five fields, no header, see ``corpus.read_labels``).
        A relative path that does not exist is also looked up as ``<root>/labels/<name>`` (the layout of
        the reference code).
    max_frames: frame budget per batch and per device: the sum of the video-frame lengths (25 fps) of
        the items in a batch; an item longer than the budget forms a batch of its own.
    num_buckets: length buckets (equal-width between the shortest and longest item).
    max_batch_size: optional cap on the number of items per batch.
    num_workers: DataLoader worker processes (0 = load in the main process).
    noise_file: babble / noise file for training augmentation; ``None`` uses the project's synthetic
        training babble track (generated on first use).
    eval_noise_file: noise file of validation and test (``decode_snr_target``); ``None`` uses the
        synthetic evaluation babble track, whose talkers are disjoint from the training track's, so a
        noisy test condition is not the noise trained on. Set both to one file only on purpose.
    train_snrs: SNRs in dB drawn uniformly per training utterance; ``None`` entries mean clean.
    train_augment: modalities augmented in training (audio: time mask + noise at ``train_snrs``; video:
        random crop + time mask). A modality left out gets the clean evaluation pipeline in training
        too, which makes the features of a frozen encoder reading it cacheable (``train.feature_cache``).
    modality_dropout: per-utterance probabilities, in training, that a modality's input is blanked
        (``{audio: 0.25, video: 0.25}``): one uniform draw per utterance drops at most one modality, so
        the model must read whichever stream is left (the LLM cannot lean on the audio alone and ignore
        the video). Blanked = what :attr:`blank_modalities` feeds at evaluation. Ignored for models of
        one modality (ASR, VSR).
    blank_modalities: modalities blanked at validation / test (``[audio]`` evaluates a model with the
        video alone): video frames become zeros after normalisation (a uniform mean-gray frame, no
        mouth), audio becomes silence; lengths are kept, so the token layout does not change.
    train_time_masks: modalities whose training augmentation includes the adaptive time masks (all, as
        the paper; ``[video]`` trains the audio with noise alone: on a short budget the masks, which
        silence up to 40 % of each second of audio, slow learning down).
    augment_variants: modality → K: each training utterance of that modality gets one of K fixed
        augmentations (noise segment, SNR, time mask), variant ``epoch mod K`` in epoch ``epoch``, instead of
        a new one every epoch (``{audio: 4}``). Its inputs then recur, so a frozen encoder reading them is
        cached with ``train.feature_cache`` (K entries per utterance) instead of running every step:
        noisy training at the cost of K clean epochs of that encoder. The other modalities still draw a
        new augmentation each epoch.
    decode_snr_target: SNR of the noise added at validation / test; ``None`` = clean.
    seed: seeds the batch order (with the epoch) and the augmentation generators.
    on_error: ``skip`` logs and drops unreadable items, ``raise`` fails on the first one.
    video_cache_mb: keep up to this many MiB of decoded video (uint8 gray frames, before augmentation) in
        the process, shared by all its datasets, so that later epochs and later loaders skip decoding
        (``data.dataset.DecodedVideos``: persistent DataLoader workers keep their own copy, and workers
        forked after the process filled it inherit it; nothing is evicted — the budget caps what is
        added). 0: decode every time. The demo's 1200 utterances take about 830 MiB.
    """

    root: str | None = None
    train_csv: str | None = None
    val_csv: str | None = None
    test_csv: str | None = None
    max_frames: int = 1000
    num_buckets: int = 400
    max_batch_size: int | None = None
    num_workers: int = 4
    noise_file: str | None = None
    eval_noise_file: str | None = None
    train_snrs: list[float | None] = field(default_factory=lambda: list(PAPER_TRAIN_SNRS))
    train_augment: list[str] = field(default_factory=lambda: ["audio", "video"])
    modality_dropout: dict[str, float] = field(default_factory=dict)
    train_time_masks: list[str] = field(default_factory=lambda: ["audio", "video"])
    augment_variants: dict[str, int] = field(default_factory=dict)
    blank_modalities: list[str] = field(default_factory=list)
    decode_snr_target: float | None = None
    seed: int = 0
    on_error: str = "skip"
    video_cache_mb: int = 0

    def __post_init__(self) -> None:
        if self.max_frames < 1:
            raise ValueError(f"data.max_frames must be >= 1, got {self.max_frames}")
        if self.num_buckets < 1:
            raise ValueError(f"data.num_buckets must be >= 1, got {self.num_buckets}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ValueError(f"data.max_batch_size must be >= 1 or null, got {self.max_batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.video_cache_mb < 0:
            raise ValueError(f"data.video_cache_mb must be >= 0, got {self.video_cache_mb}")
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"data.on_error must be 'skip' or 'raise', got {self.on_error!r}")
        if set(self.train_augment) - {"audio", "video"}:
            raise ValueError(f"data.train_augment: modalities are audio and video, got {self.train_augment}")
        for what, mods in (
            ("modality_dropout", self.modality_dropout),
            ("augment_variants", self.augment_variants),
            ("train_time_masks", self.train_time_masks),
            ("blank_modalities", self.blank_modalities),
        ):
            if set(mods) - {"audio", "video"}:
                raise ValueError(f"data.{what}: modalities are audio and video, got {list(mods)}")
        check_blank_probabilities("data.modality_dropout", self.modality_dropout)
        if not self.train_snrs:
            raise ValueError("data.train_snrs must hold at least one level (null = clean)")
        if any(
            not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in self.augment_variants.values()
        ):
            raise ValueError(f"data.augment_variants: a count >= 1 per modality, got {self.augment_variants}")
        idle = sorted(set(self.augment_variants) - set(self.train_augment))
        if idle:
            raise ValueError(
                f"data.augment_variants: {'/'.join(idle)} is not augmented in training (data.train_augment="
                f"{self.train_augment}): there is nothing to vary (drop it from data.augment_variants, e.g. "
                "data.augment_variants={})"
            )

    def noise_for(self, split: str) -> tuple[str | None, str]:
        """The noise file of ``split`` and the synthetic babble track used when it is ``None``."""
        return (self.noise_file, "train") if split == "train" else (self.eval_noise_file, "eval")

    def csv_path(self, split: str) -> Path:
        """The label CSV of ``split`` (``train``, ``val``, ``test``), resolved as documented above."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        name = getattr(self, f"{split}_csv")
        if name is None:
            raise ValueError(f"data.{split}_csv is not set")
        path = Path(name)
        if not path.is_file() and not path.is_absolute() and self.root is not None:
            alt = Path(self.root) / "labels" / path
            if alt.is_file():
                return alt
        return path
