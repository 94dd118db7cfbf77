"""Decoding options, frozen: the paper's beam search by default [paper: 15 beams, 32 new tokens]."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodingOptions:
    #: beam width of beam search (paper: 15; 1 = greedy)
    num_beams: int = 15
    #: longest transcript in LLM tokens (paper: 32)
    max_new_tokens: int = 32
    #: beam scores are divided by length ** length_penalty (Hugging Face's; > 1 favours longer outputs)
    length_penalty: float = 1.0
    #: decode in batches of this many utterances (sorted by length to limit padding)
    batch_size: int = 16
    #: run the prompt (features included) through the LLM once per utterance and copy its KV cache to
    #: the beams, instead of once per beam as Hugging Face's beam search does (same transcripts)
    prefill_once: bool = True
    #: ``transcribe``: longer recordings are cut by voice-activity detection into segments of at most
    #: this many seconds — the training utterances' length (LRS3 ``seg16s``: 16 s)
    max_segment_seconds: float = 16.0

    def __post_init__(self) -> None:
        if self.num_beams < 1 or self.max_new_tokens < 1:
            raise ValueError("num_beams and max_new_tokens must be >= 1")
        if self.max_segment_seconds < 0.1:
            raise ValueError("max_segment_seconds must be >= 0.1")
