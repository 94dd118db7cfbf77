"""Llama-AVSR: audio, visual and audio-visual speech recognition with large language models.

::

    import llama_avsr
    model = llama_avsr.load_model("runs/exp/model")   # a model directory or a hub repo id
    print(model.transcribe("talk.mp4").text)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Result", "Segment", "Transcriber", "decoding", "load_media", "load_model"]


def __getattr__(name: str) -> Any:  # lazy: `import llama_avsr` stays cheap (no torch)
    if name == "decoding":
        import importlib

        return importlib.import_module("llama_avsr.decoding")
    if name in ("Result", "Segment", "Transcriber", "load_media", "load_model"):
        from llama_avsr import decoding

        return getattr(decoding, name)
    raise AttributeError(f"module 'llama_avsr' has no attribute {name!r}")
