"""Synthetic audio-visual speech corpus: grammar sentences spoken by espeak-ng voices, with mouth-region
videos whose lips follow the phonemes, written in the LRS3 layout of auto_avsr; plus babble noise.

Entry points: :func:`generate` (the corpus, ``llama-avsr synth``), :func:`make_babble` and
:func:`default_babble_path` (multi-talker noise for augmentation).
"""

from llama_avsr.synth.babble import default_babble_path, make_babble
from llama_avsr.synth.corpus import SynthConfig, generate

__all__ = ["SynthConfig", "default_babble_path", "generate", "make_babble"]
