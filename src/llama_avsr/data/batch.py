"""The typed batch the model consumes (shapes documented once, here).

- ``inputs["audio"]``: (B, T_a) float32 waveform, 16 kHz, zero-padded on the right;
  ``lengths["audio"]``: (B,) samples.
- ``inputs["video"]``: (B, T_v, 1, 88, 88) float32 normalised mouth crops, zero-padded;
  ``lengths["video"]``: (B,) frames (25 fps).
- ``target_ids``: (B, L) int64 transcript tokens followed by EOS, right-padded with ``PAD_LABEL``;
  ``None`` at inference.
- ``blanked``: per item, the modalities the dataset blanked (modality dropout, ``data.blank_modalities``);
  empty when not known.

A *blanked* modality (modality dropout and ``data.blank_modalities`` in the dataset, a subset of a
model's streams in ``transcribe`` / ``eval`` / the Python API) keeps its shape and lengths, so prompts
and placeholders are those of training, and holds zeros in the model's input space: silence for audio,
the mean gray level for mouth crops (zero after normalisation). :func:`blank_input` and
:func:`blank_streams` are its one definition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

#: label value ignored by the loss (the HF / PyTorch convention)
PAD_LABEL = -100


@dataclass
class Batch:
    ids: list[str]
    texts: list[str]
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    lengths: dict[str, torch.Tensor] = field(default_factory=dict)
    target_ids: torch.Tensor | None = None
    blanked: list[tuple[str, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        mv = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(
            ids=self.ids,
            texts=self.texts,
            inputs={k: mv(v) for k, v in self.inputs.items()},
            lengths={k: mv(v) for k, v in self.lengths.items()},
            target_ids=None if self.target_ids is None else mv(self.target_ids),
            blanked=self.blanked,
        )

    def select(self, rows: list[int]) -> Batch:
        """The sub-batch of these rows (padding beyond the longest selected item kept)."""
        index = torch.tensor(rows, dtype=torch.long)
        pick = lambda t: t.index_select(0, index.to(t.device))  # noqa: E731
        return Batch(
            ids=[self.ids[i] for i in rows],
            texts=[self.texts[i] for i in rows],
            inputs={k: pick(v) for k, v in self.inputs.items()},
            lengths={k: pick(v) for k, v in self.lengths.items()},
            target_ids=None if self.target_ids is None else pick(self.target_ids),
            blanked=[self.blanked[i] for i in rows] if self.blanked else [],
        )

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True) so host→GPU copies can be asynchronous."""
        return Batch(
            ids=self.ids,
            texts=self.texts,
            inputs={k: v.pin_memory() for k, v in self.inputs.items()},
            lengths={k: v.pin_memory() for k, v in self.lengths.items()},
            target_ids=None if self.target_ids is None else self.target_ids.pin_memory(),
            blanked=self.blanked,
        )


def blank_input(x: torch.Tensor) -> torch.Tensor:
    """A modality's transformed input (one item, or a batch) with the signal removed, same shape."""
    return torch.zeros_like(x)


def draw_modality(probs: Mapping[str, float], u: float) -> str | None:
    """The modality a uniform draw ``u`` in [0, 1) blanks, given each modality's probability (at most
    one per draw; ``data.config.check_blank_probabilities``), or ``None``."""
    acc = 0.0
    for m, p in probs.items():
        if acc <= u < acc + p:
            return m
        acc += p
    return None


def blank_rows(batch: Batch, modality: str, rows: Sequence[int]) -> Batch:
    """Blank ``modality`` in these rows of ``batch`` (in place, recorded in ``batch.blanked``)."""
    if not batch.blanked:
        batch.blanked = [() for _ in range(len(batch))]
    for i in rows:
        batch.inputs[modality][i] = blank_input(batch.inputs[modality][i])
        if modality not in batch.blanked[i]:
            batch.blanked[i] = (*batch.blanked[i], modality)
    return batch


def blank_streams(batch: Batch, keep: Sequence[str]) -> Batch:
    """Blank the inputs of every modality of ``batch`` not in ``keep`` (in place; returns the batch)."""
    for m, x in batch.inputs.items():
        if m not in keep:
            batch.inputs[m] = blank_input(x)
    return batch
