"""Which number formats the machine computes fast: the one place that decides what ``auto`` means.

bf16 halves memory traffic and doubles matmul throughput where the hardware has bf16 units (CUDA GPUs
from Ampere on, CPUs with AVX-512-BF16 or AMX). Elsewhere PyTorch emulates it: on an AVX2-only CPU a
bf16 matmul was measured 60x slower than the float32 one (one thread, 512x576 @ 576x1536). Configs
that should run well everywhere (the embedded demo recipes) say ``auto`` for ``model.llm.dtype``,
encoder ``dtype`` and ``train.precision``; the paper recipes keep their explicit bf16.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)


@functools.cache
def native_bf16(device_type: str | None = None) -> bool:
    """Whether ``device_type`` (default: ``cuda`` when present, else ``cpu``) computes bf16 natively."""
    import torch

    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "mps":
        return True
    if device_type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN
            return False
    return False


def auto_dtype_name(name: str, device_type: str | None = None) -> str:
    """``"auto"`` → ``"bfloat16"`` where bf16 is native, else ``"float32"``; other names unchanged."""
    if name != "auto":
        return name
    return "bfloat16" if native_bf16(device_type) else "float32"


def resolve_precision(requested: str, device_type: str | None = None) -> str:
    """A Lightning precision for this machine: ``auto`` → ``bf16-mixed`` where bf16 is native, else
    ``32-true``; an explicit bf16 request on a GPU without bf16 falls back to ``32-true`` (warned);
    on a CPU that only emulates bf16 it is kept, with a warning that it is slow."""
    import torch

    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "auto":
        chosen = "bf16-mixed" if native_bf16(device_type) else "32-true"
        log.info(
            "train.precision auto: %s (%s bf16 is %s)",
            chosen,
            device_type,
            "native" if chosen != "32-true" else "emulated or absent",
        )
        return chosen
    if "bf16" in requested and device_type == "cuda" and not native_bf16("cuda"):
        log.warning("this GPU has no bf16: training in fp32 instead of %s", requested)
        return "32-true"
    if "bf16" in requested and device_type == "cpu" and not native_bf16("cpu"):
        log.warning(
            "this CPU has no native bf16 (PyTorch emulates it, many times slower than fp32): "
            "train.precision=auto would pick 32-true here"
        )
    return requested


def resolve_device(device=None):
    """``auto`` (or ``None``): CUDA when present, then Apple's MPS, else the CPU; any other name
    (``cpu``, ``cuda:1``) or ``torch.device`` as it is. The one place every command and the API ask."""
    import torch

    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    return torch.device(device)
