"""The sub-commands of ``llama-avsr`` (one module each; see ``llama_avsr/cli.py``) and what they share."""

from __future__ import annotations


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``mps`` on Apple silicon, else ``cpu``; any other
    name (``cpu``, ``cuda:1``) is returned as it is."""
    if name != "auto":
        return name
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
