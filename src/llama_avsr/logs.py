"""Logging for the command line: one line per message, at the level ``-v``/``-vv`` asks for, and the
native libraries' own stderr chatter (MediaPipe's TFLite and absl lines) kept out unless ``-vv``.

Levels: no flag = warnings and errors (plus the commands' results and progress bars), ``-v`` = info,
``-vv`` = debug, third-party libraries included.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: libraries whose INFO lines are their own business: shown at -vv only
THIRD_PARTY = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "transformers",
               "huggingface_hub.utils", "peft", "torch", "fsspec", "urllib3", "huggingface_hub", "matplotlib", "PIL", "absl")  # fmt: skip
#: lines that native code writes straight to file descriptor 2 (not Python log records)
NATIVE_SPAM = re.compile(
    rb"^(?:[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\]|INFO: Created TensorFlow Lite"
    rb"|WARNING: All log messages before absl::InitializeLog)"
)
_PREFIXES = (b"I0", b"W0", b"INFO: ", b"WARNING: All")


def level_for(verbosity: int) -> int:
    """``-v`` count → logging level: 0 warning, 1 info, 2+ debug."""
    return (logging.WARNING, logging.INFO)[verbosity] if verbosity < 2 else logging.DEBUG


def setup_logging(verbosity: int = 0) -> None:
    """Configure the root logger once for this process, with every record printed exactly once
    (see :func:`tidy_library_loggers`)."""
    level = level_for(verbosity)
    try:  # attaches its own stderr handler at import (and propagates): import it now to take that off
        import huggingface_hub.utils.logging  # noqa: F401
    except ImportError:
        pass
    root = logging.getLogger()
    if not any(getattr(h, "_llama_avsr", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._llama_avsr = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    global _verbosity
    _verbosity = verbosity
    tidy_library_loggers()


_verbosity: int | None = None


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a record is emitted, not to the
    stream that was current when logging was set up (a test harness or an embedding application may
    swap and close it; the records must then follow, not fail with "I/O operation on closed file")."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property ignores that
        pass


def tidy_library_loggers() -> None:
    """Take the stream handlers that libraries attach at import (``lightning`` adds one to its package
    logger unconditionally, so every Lightning line printed twice) and let their records reach the one
    root handler, at the level :func:`setup_logging` chose. Call it after importing such a library;
    nothing happens when the process did not set up logging (a library user's own setup is left alone)."""
    if _verbosity is None:
        return
    level = logging.DEBUG if _verbosity >= 2 else max(level_for(_verbosity), logging.WARNING)
    for name in THIRD_PARTY:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.propagate = True
        lg.setLevel(level)


class _NativeStderrFilter:
    """Route file descriptor 2 through a pipe and drop the lines :data:`NATIVE_SPAM` matches; everything
    else (Python logging, tracebacks, progress bars with their carriage returns) passes through at once."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self.real = os.dup(2)
        self.read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.thread = threading.Thread(target=self._pump, name="stderr-filter", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def _pump(self) -> None:
        pending = b""
        while chunk := os.read(self.read_fd, 65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not NATIVE_SPAM.match(line))
            # a partial line that cannot start a native log line (a progress bar) goes out now
            if pending and not any(p.startswith(pending[: len(p)]) for p in _PREFIXES):
                out, pending = out + pending, b""
            self._write(out)
        if not NATIVE_SPAM.match(pending):
            self._write(pending)

    def _write(self, data: bytes) -> None:
        # keep draining the pipe whatever happens to the real stderr: a full pipe would block every writer
        try:
            while data:
                data = data[os.write(self.real, data) :]
        except OSError:
            pass

    def close(self) -> None:
        sys.stderr.flush()
        os.dup2(self.real, 2)  # the pipe's last writer closes: the pump drains it and stops
        self.thread.join(timeout=5)


_filter: _NativeStderrFilter | None = None


def filter_native_stderr() -> None:
    """Install the filter once per process (console-script runs only: in-process callers such as
    tests keep their own stderr capture)."""
    global _filter
    if _filter is None:
        _filter = _NativeStderrFilter()
