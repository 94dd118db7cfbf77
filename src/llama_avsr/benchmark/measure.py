"""Measuring tools: repeated timing (min / median), peak memory, the machine, and a matmul peak."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

#: libraries whose versions the report records
LIBRARIES: tuple[str, ...] = ("torch", "transformers", "peft", "lightning", "safetensors", "flash-attn")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns ``{"min": s, "median": s, "runs": [s, …]}`` (seconds, wall clock, device synchronised).
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        runs.append(time.perf_counter() - start)
    return stats(runs)


def stats(runs: list[float]) -> dict[str, Any]:
    return {"min": min(runs), "median": statistics.median(runs), "runs": [round(r, 5) for r in runs]}


def _read_hwm_kib() -> int | None:
    """Peak resident set size of this process since the last reset (Linux ``VmHWM``), KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark (writing 5 to ``clear_refs``, Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory inside a ``with`` block: process RSS (CPU) and max allocated (CUDA).

    ``result``: ``{"rss_mib": …, "rss_scope": "block" | "process", "gpu_max_allocated_mib": …}``. Where
    the RSS peak cannot be reset, it is the peak of the whole process so far (``rss_scope: process``).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.result: dict[str, Any] = {}

    def __enter__(self) -> PeakMemory:
        self.scope = "block" if _reset_hwm() else "process"
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        kib = _read_hwm_kib()
        if kib is None:  # ru_maxrss: KiB on Linux, the process-lifetime peak
            kib, self.scope = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "process"
        self.result = {"rss_mib": round(kib / 1024, 1), "rss_scope": self.scope}
        if self.device.type == "cuda":
            self.result["gpu_max_allocated_mib"] = round(
                torch.cuda.max_memory_allocated(self.device) / 2**20, 1
            )


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    pm = PeakMemory(device)
    with pm:
        yield pm


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    except OSError:
        pass
    return []


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and the software: device, CPU, threads, load, library versions."""
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    env: dict[str, Any] = {
        "device": str(device),
        "cpu": _cpu_name(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": loadavg(),
        "versions": versions,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return env


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> dict[str, Any]:
    """FLOP/s of an n×n×n matmul in ``dtype`` on ``device`` (2n³ FLOPs): the best of ``repeats``."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    inner = 1 if device.type == "cpu" else 10
    t = timeit(lambda: [a @ b for _ in range(inner)], device, repeats, warmup=1)
    flops = 2 * n**3 * inner
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "flops_per_s": flops / t["min"], "time": t}


def matmul_rows(
    device: torch.device, dtype: torch.dtype, rows: list[int], k: int, n: int, repeats: int
) -> dict[int, float]:
    """FLOP/s of (rows × k) @ (k × n) for each row count: how well small batches use the machine."""
    out = {}
    g = torch.Generator(device=device).manual_seed(0)
    w = torch.randn(n, k, device=device, dtype=dtype, generator=g)
    for m in rows:
        x = torch.randn(m, k, device=device, dtype=dtype, generator=g)
        inner = max(1, int(2e8 // (2 * m * k * n)))
        t = timeit(lambda x=x, r=inner: [torch.nn.functional.linear(x, w) for _ in range(r)], device, repeats)
        out[m] = 2 * m * k * n * inner / t["min"]
    return out
