"""Atomic file writes and inter-process locks, shared by every part that writes results.

- :func:`atomic_write` and friends write to a temporary file in the same directory, ``fsync`` it and
  rename it over the target: a reader (or a crash) sees the old file or the new one, never half of one.
- :func:`exclusive_lock` takes an OS lock (``flock`` through the ``filelock`` package) on a lock file.
  The kernel releases it when the holder exits, however it exits, so a killed process leaves no stale
  lock behind; a second writer is refused at once (``wait=False``) or waits for the first.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

from llama_avsr.errors import UserError

#: the lock file a run folder or prepared dataset holds while a process writes it
LOCK_NAME = ".llama-avsr.lock"


class LockedError(UserError):
    """Another process holds the lock on a folder or file this one is about to write."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform: the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_with(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Create or replace ``path`` atomically: ``write(f)`` fills a temporary binary file beside it,
    which is then synced and renamed over ``path``. On any error the target is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write_with(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


@contextlib.contextmanager
def exclusive_lock(
    folder: str | Path, what: str, *, wait: bool = False, name: str = LOCK_NAME
) -> Iterator[Path]:
    """Hold an exclusive OS lock on ``folder/name`` (created with the folder) while writing ``folder``.

    what: how the error names the writer (e.g. "a training run").
    wait: block until the lock is free (short read-modify-write sections) instead of refusing.
    name: the lock file; a separate name locks one file of the folder (e.g. ``results.json.lock``).
    Raises :class:`LockedError` (one line naming the folder) when another process holds it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / name
    lock = FileLock(str(lock_path), timeout=-1 if wait else 0, is_singleton=False)
    try:
        lock.acquire()
    except Timeout:
        raise LockedError(
            f"{folder}: {what} is already writing here (another process holds {lock_path}); "
            "wait for it to finish or choose another folder"
        ) from None
    try:
        yield lock_path
    finally:
        lock.release()


def update_json(
    path: str | Path, updates: Mapping[str, Any], then: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Merge ``updates`` into the JSON object in ``path`` (created if missing) and return the result.

    The read-modify-write holds a lock (``.<name>.lock`` beside the file; other writers wait), and the
    file is replaced atomically, so concurrent writers keep each other's entries. ``then(merged)`` runs
    under the same lock (e.g. to redraw a plot of the whole file).
    """
    path = Path(path)
    with exclusive_lock(path.parent, f"an update of {path.name}", wait=True, name=f".{path.name}.lock"):
        merged = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        merged.update(updates)
        atomic_write_json(path, merged)
        if then is not None:
            then(merged)
    return merged
