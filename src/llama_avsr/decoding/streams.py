"""Using a subset of a model's streams: the others are blanked (their input zeroed), in ``transcribe``,
``eval`` and the Python API alike.

A blanked modality keeps its shape and lengths (so prompts and placeholders are those of training) and
holds zeros in the model's input space: silence for audio, the mean gray level for mouth crops (zero
after normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llama_avsr.data.batch import Batch


def check_streams(streams: Sequence[str] | str | None, modalities: Sequence[str]) -> tuple[str, ...]:
    """The streams to use: ``None`` → all of ``modalities``; a comma-separated string or a sequence,
    each one of ``modalities``."""
    if streams is None:
        return tuple(modalities)
    if isinstance(streams, str):
        streams = [s.strip() for s in streams.split(",") if s.strip()]
    unknown = sorted(set(streams) - set(modalities))
    if unknown or not streams:
        raise ValueError(f"streams {list(streams)}: choose one or more of this model's {list(modalities)}")
    return tuple(m for m in modalities if m in streams)


def blank_streams(batch: Batch, keep: Sequence[str]) -> Batch:
    """Zero the inputs of every modality of ``batch`` not in ``keep`` (in place; returns the batch)."""
    for m, x in batch.inputs.items():
        if m not in keep:
            batch.inputs[m] = torch.zeros_like(x)
    return batch
