"""Map-style audio-visual dataset, bad-item handling, and the DataLoader factory.

A sample is ``{"id": str, "text": str, "audio": (T_a,) float32, "video": (T_v, 1, 88, 88) float32}``
with only the requested modalities.  When both are read, the audio is cut or zero-padded to
``T_v · 640`` samples (16 kHz / 25 fps) before the transforms, as the reference does, so both streams
cover the same time.

Bad items (missing, empty or corrupt file, no audio track and no ``.wav``, frames too small to crop)
are logged with the file named and, with ``on_error="skip"``, returned as a :class:`SkippedItem`; the
collate wrapper :class:`SkipBadItems` drops them and lists their ids in the batch
(:class:`BatchWithSkips.skipped`), so the count reaches the trainer from worker processes too.
With ``on_error="raise"`` the first bad item raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from llama_avsr import media
from llama_avsr.config import MODALITIES
from llama_avsr.data.batch import Batch, blank_input, draw_modality
from llama_avsr.data.config import DataConfig
from llama_avsr.data.corpus import SAMPLES_PER_FRAME, PackedUtterances, Utterance, read_labels
from llama_avsr.data.sampler import FrameBudgetBatchSampler, mix_seed
from llama_avsr.data.transforms import build_transforms
from llama_avsr.errors import UserError

log = logging.getLogger(__name__)

#: mixed into the seeds of fixed augmentation variants (``augment_variants``), apart from the epoch seeds
_VARIANT_TAG = 0x5641524E


class DecodedVideos:
    """Decoded frames of video files (uint8, before augmentation), kept for the whole process and shared
    by all its datasets (``DataConfig.video_cache_mb``): a training run's warm-up passes over the data
    and its training loader decode each file once — the loader's workers, forked after the warm-up
    filled the cache in this process, inherit it (copy-on-write) — and so does a second run in the same
    process (the demo's stages). A DataLoader worker adds what it decodes to its own copy. Keyed by the
    file's path, size and modification time: a rewritten file is decoded again. Each dataset adds frames
    only while the cache holds less than its own budget."""

    def __init__(self) -> None:
        self._frames: dict[tuple[str, int, int], torch.Tensor] = {}
        self.bytes = 0  # held

    def __len__(self) -> int:
        return len(self._frames)

    @staticmethod
    def key(path: str | Path | None) -> tuple[str, int, int] | None:
        if path is None:
            return None
        try:
            st = Path(path).stat()
        except OSError:  # read_video names the missing file
            return None
        return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)

    def get(self, key: tuple[str, int, int] | None) -> torch.Tensor | None:
        return None if key is None else self._frames.get(key)

    def put(self, key: tuple[str, int, int] | None, frames: torch.Tensor, budget: int) -> None:
        size = frames.numel() * frames.element_size()
        if key is not None and key not in self._frames and self.bytes + size <= budget:
            self._frames[key] = frames
            self.bytes += size

    def clear(self) -> None:
        self._frames.clear()
        self.bytes = 0


#: this process's decoded videos (:class:`DecodedVideos`)
DECODED_VIDEOS = DecodedVideos()


class DataError(UserError, ValueError):
    """A label file or corpus setting that cannot be used (named in the message)."""


Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class SkippedItem:
    """Stands in for a sample that could not be loaded (``on_error="skip"``)."""

    id: str
    reason: str


@dataclass
class BatchWithSkips(Batch):
    """A :class:`Batch` that also lists the ids of the items dropped from it as unreadable.

    A batch whose items were all bad has ``len(batch) == 0`` and no inputs: skip the step.
    """

    skipped: list[str] = field(default_factory=list)

    @classmethod
    def from_batch(cls, batch: Batch, skipped: list[str]) -> BatchWithSkips:
        return cls(**{f.name: getattr(batch, f.name) for f in fields(Batch)}, skipped=skipped)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> BatchWithSkips:
        return BatchWithSkips.from_batch(super().to(device, non_blocking), self.skipped)

    def pin_memory(self) -> BatchWithSkips:
        return BatchWithSkips.from_batch(super().pin_memory(), self.skipped)


class SkipBadItems:
    """Collate wrapper: drops :class:`SkippedItem` (and ``None``) samples, collates the rest.

    collator: e.g. :class:`~llama_avsr.data.collate.Collator`.  Returns :class:`BatchWithSkips`.
    """

    def __init__(self, collator: Callable[[Sequence[dict[str, Any]]], Batch]) -> None:
        self.collator = collator

    def __call__(self, samples: Sequence[dict[str, Any] | SkippedItem | None]) -> BatchWithSkips:
        good = [s for s in samples if isinstance(s, dict)]
        skipped = [
            s.id if isinstance(s, SkippedItem) else "<unknown>" for s in samples if not isinstance(s, dict)
        ]
        if not good:
            return BatchWithSkips(ids=[], texts=[], skipped=skipped)
        return BatchWithSkips.from_batch(self.collator(good), skipped)


class AVDataset(Dataset):
    """Decode, align and transform utterances.

    utterances: the corpus (``corpus.read_labels`` / ``corpus.utterance_from_file``).
    modalities: subset of ``("audio", "video")`` to load.
    transforms: a pipeline per modality (``transforms.build_transforms``); by default the eval pipelines
        without noise.  Video pipelines take uint8 (T, H, W) frames, audio pipelines (T,) float32.
    on_error: ``skip`` (log, return :class:`SkippedItem`) or ``raise``.
    seed: seeds the augmentation (and modality dropout). An item asked for as ``dataset[(epoch, index)]``
        (a keyed batch sampler, as training uses) draws from a generator seeded by (seed, epoch, index):
        the same augmentation and noise whatever the number of workers, the prefetching, or a resume
        mid-epoch. A plain ``dataset[index]`` draws from one generator per process, seeded from ``seed``
        (and, in a DataLoader worker, the worker's seed set by the DataLoader's generator).
    modality_dropout: modality → probability that an item's input is blanked (at most one modality per
        item; ``DataConfig.modality_dropout``); ignored when only one modality is loaded. blank: modalities blanked in every item.
    Items in which a modality was blanked list them under ``"blanked"``.
    augment_variants: modality → K (``DataConfig.augment_variants``): that modality's transform draws from
        one of K generators fixed per item, seeded by (seed, variant, index, modality): variant
        ``epoch mod K`` for a keyed item, a random one (from the item's generator) for a plain index.
    video_cache_bytes: decoded video frames (uint8, before augmentation) of up to this many bytes are kept
        per process and reused instead of decoding again (``DataConfig.video_cache_mb``; the process's
        :data:`DECODED_VIDEOS`, shared by its datasets); 0: none.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        modalities: Sequence[str],
        transforms: Mapping[str, Transform] | None = None,
        on_error: str = "skip",
        seed: int = 0,
        modality_dropout: Mapping[str, float] | None = None,
        blank: Sequence[str] = (),
        video_cache_bytes: int = 0,
        augment_variants: Mapping[str, int] | None = None,
    ) -> None:
        bad = set(modalities) - set(MODALITIES)
        if bad or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {list(modalities)}")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        # packed: no per-item Python objects to be copied into every worker process
        self.utterances = (
            utterances if isinstance(utterances, PackedUtterances) else PackedUtterances(utterances)
        )
        self.modalities = [m for m in MODALITIES if m in modalities]
        if transforms is None:
            transforms = build_transforms("test", self.modalities, DataConfig())
        missing = set(self.modalities) - set(transforms)
        if missing:
            raise ValueError(f"no transform for modality {sorted(missing)}")
        self.transforms = dict(transforms)
        self.on_error = on_error
        self.seed = seed
        # with one modality there is nothing left to read: dropout only applies to audio-visual items
        drop = modality_dropout if len(self.modalities) > 1 else None
        self.modality_dropout = {m: p for m, p in (drop or {}).items() if m in self.modalities and p > 0}
        self.blank = [m for m in blank if m in self.modalities]
        self.augment_variants = {
            m: int(k) for m, k in (augment_variants or {}).items() if m in self.modalities
        }
        self._gen: torch.Generator | None = None
        self._gen_owner: int | None = None
        self.video_cache_bytes = video_cache_bytes

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def lengths(self) -> list[int]:
        """Length of each item in video frames (for the batch sampler)."""
        return self.utterances.n_frames.tolist()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_gen"] = state["_gen_owner"] = None  # each worker seeds its own
        return state

    def generator(self) -> torch.Generator:
        """This process's augmentation generator (one per DataLoader worker)."""
        info = get_worker_info()
        owner = -1 if info is None else info.id
        if self._gen is None or self._gen_owner != owner:
            seed = mix_seed(self.seed, 0 if info is None else info.seed, owner + 1)
            self._gen, self._gen_owner = torch.Generator().manual_seed(seed), owner
        return self._gen

    # -- decoding -----------------------------------------------------------------------------------

    @staticmethod
    def read_video(utt: Utterance) -> torch.Tensor:
        """uint8 gray frames at 25 fps, (T_v, H, W)."""
        if utt.video is None:
            raise media.MediaError(f"utterance {utt.id!r} has no video file")
        frames, fps = media.read_video(utt.video, gray=True)
        return torch.from_numpy(media.resample_frames(frames, fps))

    def _cached_video(self, utt: Utterance) -> torch.Tensor:
        """:meth:`read_video`, from this process's cache of decoded frames when it holds the file (the
        transforms never modify their input in place, so a cached tensor is handed out as is)."""
        if not self.video_cache_bytes:
            return self.read_video(utt)
        key = DECODED_VIDEOS.key(utt.video)
        frames = DECODED_VIDEOS.get(key)
        if frames is None:
            frames = self.read_video(utt)
            DECODED_VIDEOS.put(key, frames, self.video_cache_bytes)
        return frames

    @staticmethod
    def read_audio(utt: Utterance) -> torch.Tensor:
        """16 kHz mono float32, (T_a,): from the audio file, or the video's audio track without one."""
        src = utt.audio_source()
        try:
            return torch.from_numpy(media.read_audio(src))
        except media.MediaError as e:
            if src == utt.video and utt.audio is not None:
                raise media.MediaError(f"{utt.audio} does not exist and {e}") from e
            raise

    def load(
        self, index: int, generator: torch.Generator | None = None, epoch: int | None = None
    ) -> dict[str, Any]:
        """Decode, align and transform item ``index``; raises ``MediaError`` naming the file.

        generator: draws the augmentation (default: this process's generator, :meth:`generator`).
        epoch: picks the variant of the modalities in ``augment_variants`` (``epoch mod K``; without it,
        a random variant drawn from ``generator``)."""
        utt = self.utterances[index]
        raw: dict[str, torch.Tensor] = {}
        if "video" in self.modalities:
            raw["video"] = self._cached_video(utt)
        if "audio" in self.modalities:
            raw["audio"] = self.read_audio(utt)
            if "video" in raw:
                raw["audio"] = cut_or_pad(raw["audio"], raw["video"].shape[0] * SAMPLES_PER_FRAME)
        sample: dict[str, Any] = {"id": utt.id, "text": utt.text}
        g = generator if generator is not None else self.generator()
        for m, x in raw.items():
            try:
                sample[m] = self.transforms[m](x, self._variant_generator(m, index, epoch, g)).float()
            except ValueError as e:  # e.g. frames too small to crop: a property of the file
                path = utt.video if m == "video" else utt.audio_source()
                raise media.MediaError(f"{path}: {m} transform failed ({e})") from e
        blanked = list(self.blank)
        if self.modality_dropout:
            m = draw_modality(self.modality_dropout, float(torch.rand((), generator=g)))
            if m is not None and m not in blanked:
                blanked.append(m)
        for m in blanked:
            sample[m] = blank_input(sample[m])
        if blanked:
            sample["blanked"] = blanked
        return sample

    def _variant_generator(
        self, modality: str, index: int, epoch: int | None, g: torch.Generator
    ) -> torch.Generator:
        """The generator of ``modality``'s transform: ``g``, or the item's fixed variant generator when the
        modality has a number of variants."""
        k = self.augment_variants.get(modality)
        if k is None:
            return g
        variant = epoch % k if epoch is not None else int(torch.randint(0, k, (), generator=g))
        code = MODALITIES.index(modality) + 1
        return torch.Generator().manual_seed(mix_seed(self.seed, _VARIANT_TAG, variant, index, code))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | SkippedItem:
        """Item ``key``: an index, or ``(epoch, index)`` for an item with its own augmentation stream."""
        generator = None
        epoch = None
        if isinstance(key, tuple):
            epoch, index = key
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index))
        else:
            index = key
        try:
            return self.load(index, generator, epoch)
        except (media.MediaError, OSError) as e:
            if self.on_error == "raise":
                raise
            utt = self.utterances[index]
            log.warning("skipping utterance %s: %s", utt.id, e)
            return SkippedItem(utt.id, str(e))


def cut_or_pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """Trim or right-pad with zeros along dim 0 to ``length``. (T, …) → (length, …)"""
    if x.shape[0] >= length:
        return x[:length]
    return torch.cat([x, x.new_zeros((length - x.shape[0], *x.shape[1:]))])


def load_split(cfg: DataConfig, split: str) -> list[Utterance]:
    """The utterances of ``split`` from its label CSV (malformed lines skipped, or raised with
    ``on_error="raise"``)."""
    if cfg.root is None:
        raise DataError("data.root is not set: give the corpus root (data.root=... or --root)")
    try:
        path = cfg.csv_path(split)
    except ValueError as e:  # the split's CSV is not set
        raise DataError(f"{e}: give the {split} label CSV (data.{split}_csv=..., or --csv)") from e
    if not Path(path).is_file():
        raise DataError(f"{path}: label file not found (set data.{split}_csv, or --csv)")
    utterances, problems = read_labels(path, cfg.root, strict=cfg.on_error == "raise")
    if not utterances:
        why = f"all {len(problems)} lines are malformed (first: {problems[0]})" if problems else "it is empty"
        raise DataError(f"{path}: no usable utterances ({why})")
    return utterances


def build_dataloader(
    utterances: Sequence[Utterance],
    cfg: DataConfig,
    collator: Callable[[Sequence[dict[str, Any]]], Batch],
    split: str,
    *,
    modalities: Sequence[str] | None = None,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    transforms: Mapping[str, Transform] | None = None,
) -> DataLoader:
    """A DataLoader of :class:`BatchWithSkips` for ``split`` (``train`` shuffles and augments).

    modalities: defaults to ``collator.modalities``.
    epoch: the sampler's starting epoch (Lightning then calls ``set_epoch`` on ``loader.batch_sampler``).
    rank, world_size: distributed training; the sampler gives each rank disjoint batches and the same
        number of steps (see ``sampler.FrameBudgetBatchSampler``; with Lightning set
        ``use_distributed_sampler=False``).  Padding repeats a few batches at val/test under DDP.
    transforms: override the pipelines built from ``cfg``.

    Workers are persistent. Training items get their augmentation (noise included) from a generator
    seeded by (``cfg.seed``, epoch, item): a run is reproducible for any ``num_workers`` and resumes
    mid-epoch exactly (:class:`AVDataset`); other splits draw from one generator per worker.
    """
    if modalities is None:
        modalities = getattr(collator, "modalities", None)
        if modalities is None:
            raise ValueError("pass `modalities` (the collator has no `modalities` attribute)")
    mods = list(modalities)
    if transforms is None:
        transforms = build_transforms(split, mods, cfg)
    train = split == "train"
    dataset = AVDataset(
        utterances,
        mods,
        transforms,
        on_error=cfg.on_error,
        # training items are keyed by (epoch, index): their streams must not depend on the rank, so
        # that a run resumed on another number of processes augments each item as before
        seed=cfg.seed if train else mix_seed(cfg.seed, rank),
        modality_dropout=cfg.modality_dropout if train else None,
        blank=() if train else cfg.blank_modalities,
        video_cache_bytes=cfg.video_cache_mb << 20,
        augment_variants=cfg.augment_variants if train else None,
    )
    sampler = FrameBudgetBatchSampler(
        dataset.lengths,
        cfg.max_frames,
        num_buckets=cfg.num_buckets,
        max_batch_size=cfg.max_batch_size,
        shuffle=train,
        seed=cfg.seed,
        num_replicas=world_size,
        rank=rank,
        keyed=split == "train",  # per-item augmentation streams: exact resume, any number of workers
    )
    sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=SkipBadItems(collator),
        num_workers=cfg.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator().manual_seed(mix_seed(cfg.seed, epoch, rank)),
    )
