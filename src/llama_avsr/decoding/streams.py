"""Using a subset of a model's streams: the others are blanked, in ``transcribe``, ``eval`` and the
Python API alike (what a blanked modality holds: :mod:`llama_avsr.data.batch`, the one definition that
training's modality dropout uses too)."""

from __future__ import annotations

from collections.abc import Sequence


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
