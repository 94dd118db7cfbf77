"""``llama-avsr bench``: training, encoder and decoding speed, memory and FLOP/s on synthetic inputs, and
each speed-up measured against the paper-exact path in the same run (docs/performance.md)."""

from llama_avsr.benchmark.config import SECTIONS, BenchConfig, load_bench_config
from llama_avsr.benchmark.report import format_report
from llama_avsr.benchmark.run import run_bench

__all__ = ["SECTIONS", "BenchConfig", "format_report", "load_bench_config", "run_bench"]
