"""Tiny random audio-visual model configs shared by the model tests: a Whisper audio stream and an
AV-HuBERT (with LoRA) video stream, projectors 32 wide, a random tiny Llama with SmolLM2's tokenizer —
everything random and frozen except projectors and LoRA."""

from __future__ import annotations

from typing import Any

WHISPER = {"kind": "whisper", "arch": "tiny-whisper", "options": {"pad_to_30s": False}}
AVHUBERT = {"kind": "avhubert", "arch": "tiny-avhubert", "options": {"lora": True}}


def av_model_dict(
    audio_compression: dict[str, Any],
    video_compression: dict[str, Any],
    lora: dict[str, Any],
    video_layernorm: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A ``model:`` section (plain dicts, for ``from_dict(ModelConfig, …)``); ``extra``: more top-level
    keys such as ``tasks``."""
    video_projector: dict[str, Any] = {"hidden": 32}
    if video_layernorm:
        video_projector["layernorm"] = True
    return {
        "encoders": {"whisper": WHISPER, "avhubert": AVHUBERT},
        "streams": {
            "audio": {
                "encoder": "whisper",
                "inputs": ["audio"],
                "compression": audio_compression,
                "projector": {"hidden": 32},
                "begin_token": "<audio>",
                "end_token": "</audio>",
            },
            "video": {
                "encoder": "avhubert",
                "inputs": ["video"],
                "compression": video_compression,
                "projector": video_projector,
                "begin_token": "<video>",
                "end_token": "</video>",
            },
        },
        **extra,
        "llm": {"source": None, "arch": "tiny-llama", "tokenizer": "smollm2-135m", "lora": lora},
    }
