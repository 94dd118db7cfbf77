"""Benchmark settings: the ``bench:`` section of a benchmark config (the other sections are an ordinary
experiment config: ``model``, ``data``, ``train``, ``decode``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_avsr.config import apply_overrides, from_dict, load_yaml

#: every section the bench can run, in the order it runs them
SECTIONS: tuple[str, ...] = (
    "matmul",
    "encoder",
    "train",
    "whisper",
    "feature_cache",
    "decode",
    "rates",
    "attention",
    "precision",
    "compile",
    "data",
)


@dataclass
class BenchConfig:
    """What to measure and how.

    device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` …
    threads: torch intra-op threads (``None``: torch's default). On a shared CPU, fewer threads than
        cores avoids stalls of every parallel op behind a busy core.
    precision: ``bf16-mixed`` (bf16 autocast), ``32-true`` …; ``None`` takes ``train.precision``.
    batch_size: utterances per training step.
    lengths: utterance lengths (s) of the sweep.
    compare_seconds: utterance length (s) of the speed-up comparisons (the paper's LRS3 is ≈3 s).
    repeats / warmup: timed runs (min and median reported) and untimed runs before them.
    speech: synthesise inputs with espeak-ng when it is installed (else noise); speed does not depend
        on it, the Whisper feature similarity and decoding lengths do.
    words_per_second: transcript length per second of audio (noise inputs).
    epoch_utterances: utterances in the feature-cache epochs.
    decode_utterances / decode_batch_size / decode_repeats: the decoding comparison (batch size
        ``None``: ``decode.batch_size``): the fast path (batches, prompt once per utterance) against the
        exact one-at-a-time path (prompt once per beam, as the published code), beam and greedy search.
    decode_paper_exact: when Whisper runs on the true length, also time the exact one-at-a-time path
        with Whisper on 30 s padding (the paper-exact decoding; its transcripts differ, not compared).
    decode_float32_check: when the LLM computes in bf16 / fp16, also decode one at a time and batched
        with the LLM upcast to float32 and no autocast, and judge "identical transcripts" there (bf16
        rounding differs between a padded batch and a lone utterance and flips near-tied beams).
    attention: LLM attention implementations to compare (``flash_attention_2`` only runs on a GPU with
        flash-attn installed).
    compile: also measure the training step with ``torch.compile`` on the LLM decoder.
    data_workers: DataLoader worker counts to measure (the data section writes a small corpus).
    matmul_size: side of the square matmul of the peak measurement (``None``: 2048 CPU, 8192 GPU).
    sections: subset of :data:`SECTIONS` to run (``None``: all).
    seed: seeds the synthetic inputs and the random parts of the model.
    """

    device: str = "auto"
    threads: int | None = None
    precision: str | None = None
    batch_size: int = 8
    lengths: list[float] = field(default_factory=lambda: [2.0, 5.0, 10.0, 20.0])
    compare_seconds: float = 3.0
    repeats: int = 3
    warmup: int = 1
    speech: bool = True
    words_per_second: float = 2.5
    epoch_utterances: int = 32
    decode_utterances: int = 16
    decode_batch_size: int | None = None
    decode_repeats: int = 1
    decode_float32_check: bool = True
    decode_paper_exact: bool = True
    attention: list[str] = field(default_factory=lambda: ["sdpa", "eager", "flash_attention_2"])
    compile: bool = False
    data_workers: list[int] = field(default_factory=lambda: [0, 2])
    matmul_size: int | None = None
    sections: list[str] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError("bench.repeats must be >= 1 and bench.warmup >= 0")
        if self.batch_size < 1 or self.epoch_utterances < 1 or self.decode_utterances < 1:
            raise ValueError("bench batch and utterance counts must be >= 1")
        if not self.lengths or min(self.lengths) <= 0 or self.compare_seconds <= 0:
            raise ValueError("bench.lengths and bench.compare_seconds must be positive seconds")
        unknown = set(self.sections or []) - set(SECTIONS)
        if unknown:
            raise ValueError(f"bench.sections: unknown {sorted(unknown)}; choose from {list(SECTIONS)}")

    def runs(self, section: str) -> bool:
        return self.sections is None or section in self.sections


def load_bench_config(path: str | Path, overrides: list[str] | None = None) -> tuple[Any, BenchConfig]:
    """Read a benchmark YAML → (:class:`~llama_avsr.experiment.ExperimentConfig`, :class:`BenchConfig`).

    Overrides (``bench.repeats=5``, ``model.llm.dtype=float32``) apply to either part.
    """
    from llama_avsr.experiment import ExperimentConfig

    data = apply_overrides(load_yaml(path), overrides or [])
    bench = from_dict(BenchConfig, data.pop("bench", None) or {}, "bench")
    return ExperimentConfig.from_dict(data), bench
