"""Encoder registry: importing this package registers the built-in encoders."""

from llama_avsr.models.encoders import avhubert, lipconv, wavlm, whisper  # noqa: F401
from llama_avsr.models.encoders.base import ENCODERS, Encoder, build_encoder

__all__ = ["ENCODERS", "Encoder", "build_encoder"]
