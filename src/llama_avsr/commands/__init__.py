"""The sub-commands of ``llama-avsr`` (one module each; see ``llama_avsr/cli.py``) and what they share."""

from __future__ import annotations


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``mps`` on Apple silicon, else ``cpu``; any other
    name (``cpu``, ``cuda:1``) is returned as it is (see :func:`llama_avsr.devices.resolve_device`)."""
    if name != "auto":
        return name
    from llama_avsr.devices import resolve_device as resolve

    return str(resolve(name))
