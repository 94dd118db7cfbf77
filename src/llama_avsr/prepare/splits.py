"""Train / val / test label files from one prepared label CSV, with an optional length filter.

``prepare`` writes every prepared video into ``<out>/labels/<dataset>.csv``; this module derives
``<dataset>_train.csv``, ``<dataset>_val.csv`` and ``<dataset>_test.csv`` beside it (the names
``data.train_csv`` / ``val_csv`` / ``test_csv`` then take), in one of three ways:

- a **split file**: one ``<split> <path>`` line per utterance (``#`` comments allowed); ``<path>`` is the
  CSV's ``rel_path`` with or without ``.mp4`` (MuAViC's and LRS3's file lists give exactly that);
- **by folder**: the first folder of ``rel_path`` names the split (LRS3: ``pretrain``/``trainval`` →
  train, ``test`` → test; also ``train``, ``val``/``valid``/``dev``);
- **by ratio** with speakers kept apart: the speaker is the folder that holds the file (LRS3, VoxCeleb2
  and ``synth`` layouts: ``…/<speaker>/<utterance>.mp4``); speakers are shuffled with a seed and dealt
  to the splits until each has its share of utterances, so no voice is heard in two splits.

The length filter drops utterances longer than ``max_frames`` video frames (25 fps) from train and val,
as the published ``*_seg16s_LLM_lowercase_*.csv`` label files do for training (long utterances make
training unstable and set the peak GPU memory); the test split is kept whole, as the published test
file is.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from llama_avsr.data.config import SPLITS
from llama_avsr.io import atomic_write_text

log = logging.getLogger(__name__)

#: first-folder names → split (the LRS3 release and common layouts)
FOLDER_SPLITS: dict[str, str] = {
    "pretrain": "train",
    "trainval": "train",
    "train": "train",
    "val": "val",
    "valid": "val",
    "dev": "val",
    "test": "test",
}


@dataclass
class SplitReport:
    """Utterances written per split, dropped by the length filter, and left out (no split)."""

    files: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    too_long: dict[str, int] = field(default_factory=dict)
    unassigned: int = 0

    def summary(self) -> str:
        parts = [f"{s} {self.counts.get(s, 0)}" for s in SPLITS]
        dropped = sum(self.too_long.values())
        extra = f"; {dropped} over the length limit dropped" if dropped else ""
        extra += f"; {self.unassigned} in no split" if self.unassigned else ""
        return f"splits: {', '.join(parts)}{extra}"


def _key(rel_path: str) -> str:
    return rel_path.removesuffix(".mp4")


def speaker_of(rel_path: str) -> str:
    """The name of the folder holding the file (``test/spk03/00001.mp4`` → ``spk03``)."""
    parent = PurePosixPath(rel_path).parent.name
    return parent or PurePosixPath(rel_path).stem


def read_split_file(path: str | Path) -> dict[str, str]:
    """``<split> <path>`` lines → {path without .mp4: split}; a clear error names a bad line."""
    out: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or parts[0] not in SPLITS:
            raise ValueError(f"{path}:{n}: expected '<train|val|test> <path>', got {line!r}")
        out[_key(parts[1].strip())] = parts[0]
    return out


def by_file(rel_paths: list[str], split_file: str | Path) -> dict[str, str]:
    table = read_split_file(split_file)
    return {r: table[_key(r)] for r in rel_paths if _key(r) in table}


def by_folder(rel_paths: list[str]) -> dict[str, str]:
    out = {}
    for r in rel_paths:
        first = PurePosixPath(r).parts[0].lower() if len(PurePosixPath(r).parts) > 1 else ""
        if first in FOLDER_SPLITS:
            out[r] = FOLDER_SPLITS[first]
    return out


def by_ratio(rel_paths: list[str], ratios: tuple[float, float, float], seed: int = 0) -> dict[str, str]:
    """Deal whole speakers to train / val / test so that each split gets about its share of utterances."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split ratios must be three numbers >= 0 (train,val,test), got {ratios}")
    total = sum(ratios)
    per_speaker: dict[str, list[str]] = defaultdict(list)
    for r in rel_paths:
        per_speaker[speaker_of(r)].append(r)
    speakers = sorted(per_speaker)
    random.Random(seed).shuffle(speakers)
    target = {s: len(rel_paths) * r / total for s, r in zip(SPLITS, ratios, strict=True)}
    got: Counter[str] = Counter()
    out: dict[str, str] = {}
    # the smaller splits first: each takes speakers until it has its share, train takes the rest
    order = sorted((s for s in SPLITS if target[s] > 0 and s != "train"), key=lambda s: target[s])
    it = iter(speakers)
    for split in order:
        for spk in it:
            for r in per_speaker[spk]:
                out[r] = split
            got[split] += len(per_speaker[spk])
            if got[split] >= target[split]:
                break
    rest = "train" if target["train"] > 0 else (order[-1] if order else "train")
    for spk in it:
        for r in per_speaker[spk]:
            out[r] = rest
    for split in SPLITS:
        if target[split] > 0 and not any(v == split for v in out.values()):
            log.warning(
                "split %s is empty: too few speakers (%d) for the ratios %s", split, len(speakers), ratios
            )
    return out


def write_splits(
    csv: str | Path,
    assign: dict[str, str],
    *,
    max_frames: int | None = None,
    write=None,
) -> SplitReport:
    """Write ``<csv stem>_<split>.csv`` beside ``csv`` for every split (files may be empty), keeping the
    CSV's line order; ``max_frames`` drops longer train/val utterances. ``write(path, text)`` writes a
    file (default: atomically, with ``io.atomic_write_text``)."""
    csv = Path(csv)
    rows: dict[str, list[str]] = {s: [] for s in SPLITS}
    report = SplitReport()
    for line in csv.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        fields = line.split(",", 4)
        if len(fields) != 5:
            continue  # the CSV reader reports malformed lines where the corpus is read
        split = assign.get(fields[1])
        if split is None:
            report.unassigned += 1
            continue
        if max_frames is not None and split != "test" and fields[2].isdigit() and int(fields[2]) > max_frames:
            report.too_long[split] = report.too_long.get(split, 0) + 1
            continue
        rows[split].append(line + "\n")
    for split in SPLITS:
        path = csv.with_name(f"{csv.stem}_{split}.csv")
        text = "".join(rows[split])
        (write or atomic_write_text)(path, text)
        report.files[split] = str(path)
        report.counts[split] = len(rows[split])
    return report
