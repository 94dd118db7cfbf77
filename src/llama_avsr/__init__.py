"""Llama-AVSR: audio, visual and audio-visual speech recognition with large language models."""

__version__ = "0.1.0"
