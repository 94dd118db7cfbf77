"""Decoding: everything between a trained model and text.

- :mod:`~llama_avsr.decoding.options` — beam-search settings (:class:`DecodingOptions`);
- :mod:`~llama_avsr.decoding.search` — batched deterministic beam search (:func:`decode`, :func:`generate`);
- :mod:`~llama_avsr.decoding.media` — files / arrays → :class:`Media` (:func:`load_media`), with one error
  type per reason an input cannot be used;
- :mod:`~llama_avsr.decoding.segment` — voice-activity segmentation of long recordings;
- :mod:`~llama_avsr.decoding.streams` — using a subset of a model's streams;
- :mod:`~llama_avsr.decoding.transcriber` — the Python API (:func:`load_model`, :class:`Transcriber`);
- :mod:`~llama_avsr.decoding.writers` — txt / json / srt / vtt outputs.

Inference imports nothing from ``training/``. Names are imported lazily, so that ``import llama_avsr``
(and the CLI's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DecodingOptions": "options",
    "Hypothesis": "search",
    "decode": "search",
    "generate": "search",
    "Media": "media",
    "MediaError": "media",
    "NoAudioError": "media",
    "NoFaceError": "media",
    "NoVideoError": "media",
    "UnreadableMediaError": "media",
    "load_media": "media",
    "plan_segments": "segment",
    "Result": "transcriber",
    "Segment": "transcriber",
    "Transcriber": "transcriber",
    "load_model": "transcriber",
    "resolve_device": "transcriber",
    "write_result": "writers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
