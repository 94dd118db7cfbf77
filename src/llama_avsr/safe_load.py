"""The one place that reads torch pickles: every checkpoint read in the project goes through here.

:func:`load` is ``torch.load(weights_only=True)`` — tensors, containers and plain values only; no pickled
code runs — plus an explicit allowlist for the few non-tensor objects some formats hold (argparse
``Namespace`` in Lightning hyper-parameters, the fairseq stand-ins of ``models/encoders/avhubert.py``).
A refused or unreadable file raises :class:`CheckpointReadError` with one line that names the file and
the reason (the Python object the file asks for, or that it is truncated / not a torch file).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from llama_avsr.errors import UserError


class CheckpointReadError(UserError, ValueError):
    """A checkpoint that cannot be read safely; the message names the file and why."""


def load(
    path: str | Path,
    *,
    allow: Mapping[str, Any] | None = None,
    type_ref: Callable[[str], Any] | None = None,
    type_ref_modules: Iterable[str] = (),
    mmap: bool | None = None,
    error: type[Exception] = CheckpointReadError,
) -> Any:
    """Read a torch pickle with ``weights_only=True`` on the CPU.

    allow: full pickle name → the object the unpickler may use for it (an allowlist; nothing else).
    type_ref, type_ref_modules: globals under these module prefixes are passed as ``type_ref(name)``
        (passive references to types, e.g. omegaconf's ``object_type``), never imported.
    mmap: memory-map a zip-format file instead of reading it (default: whenever it is a zip file), so
        a large checkpoint is not copied into memory before it is used.
    error: the exception class to raise (a subclass of ValueError naming the format is clearer).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such checkpoint file")
    allowed = dict(allow or {})
    is_zip = zipfile.is_zipfile(path)
    prefixes = tuple(type_ref_modules)
    if is_zip and prefixes and type_ref is not None:
        try:
            for name in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)):
                if name not in allowed and name.startswith(prefixes):
                    allowed[name] = type_ref(name)
        except Exception:  # torch.load below reports a broken file properly
            pass
    use_mmap = is_zip if mmap is None else mmap and is_zip
    try:
        with torch.serialization.safe_globals([(obj, name) for name, obj in allowed.items()]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as e:
        raise error(describe_refusal(path, e)) from e
    except Exception as e:  # zip / storage errors of truncated or foreign files
        raise error(
            f"{path}: cannot read as a torch checkpoint (truncated, corrupt or another format): {_first_line(e)}"
        ) from e


def describe_refusal(path: str | Path, err: BaseException) -> str:
    """One line for an ``UnpicklingError`` of a weights-only load: the global the file asks for and
    why it is refused, or that the file is not a readable torch pickle."""
    detail = weights_only_detail(str(err))
    found = re.search(r"GLOBAL ([\w.]+)", detail) or re.search(r"global:? ([\w.]+\.[\w]+)", detail)
    if found:
        return (
            f"{path}: refusing to unpickle: the file needs the Python object {found.group(1)}, which a "
            "weights-only load does not run (only tensors and plain data are read, so that a file cannot "
            "execute code); convert it to a plain state dict, or use the command that reads this format"
        )
    if "would be created" in detail or "Unsupported" in detail and "operand" not in detail:
        return f"{path}: refusing to unpickle: {detail}"
    return (
        f"{path}: cannot read as a torch checkpoint (truncated, corrupt or another format): "
        f"{detail or _first_line(err)}"
    )


def weights_only_detail(message: str) -> str:
    """The specific reason inside torch's long "Weights only load failed …" message (one line)."""
    if "WeightsUnpickler error:" in message:
        message = message.split("WeightsUnpickler error:", 1)[1]
    elif "Weights only load failed" in message and "\n\n" in message:
        message = message.split("\n\n", 1)[1]
    message = message.split("Check the documentation of torch.load")[0]
    return " ".join(message.split())[:300]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    text = text.splitlines()[0][:300] if text else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


#: pickled weight files ``from_pretrained`` may read from a model folder
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def check_pickled_weights(folder: str | Path) -> None:
    """Read every pickled weight file in a local model folder the safe way (memory-mapped, so cheaply)
    before a library loads it: a file that asks for Python objects is refused here, with its name,
    whatever loader the library would use."""
    for pattern in PICKLED_WEIGHTS:
        for path in sorted(Path(folder).glob(pattern)):
            if path.is_file():
                load(path, mmap=True)
