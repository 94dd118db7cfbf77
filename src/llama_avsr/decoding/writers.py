"""Transcripts to files, with whisper's conventions: ``<output_dir>/<input stem>.<format>`` for the formats
``txt`` (one segment a line), ``json`` (text, segments, duration), ``srt`` and ``vtt`` (subtitles), or
``all``. Files are written atomically (a temporary file, then a rename)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from llama_avsr.decoding.transcriber import Result
from llama_avsr.io import atomic_write_text

FORMATS = ("txt", "json", "srt", "vtt")


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"txt,srt"`` / ``"all"`` / a list → the formats, checked."""
    parts = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    if "all" in parts:
        return FORMATS
    bad = sorted(set(parts) - set(FORMATS))
    if bad or not parts:
        raise ValueError(f"output format(s) {bad or parts}: choose from {', '.join(FORMATS)} or all")
    return tuple(dict.fromkeys(parts))


def timestamp(seconds: float, decimal: str = ",") -> str:
    """``HH:MM:SS,mmm`` (srt) or with ``.`` (vtt)."""
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def to_txt(result: Result) -> str:
    return "".join(f"{s.text}\n" for s in result.segments if s.text)


def to_json(result: Result) -> str:
    return json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n"


def to_srt(result: Result) -> str:
    cues = [s for s in result.segments if s.text]
    return "".join(
        f"{i}\n{timestamp(s.start)} --> {timestamp(s.end)}\n{s.text}\n\n" for i, s in enumerate(cues, 1)
    )


def to_vtt(result: Result) -> str:
    cues = [s for s in result.segments if s.text]
    body = "".join(f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text}\n\n" for s in cues)
    return "WEBVTT\n\n" + body


WRITERS: dict[str, Callable[[Result], str]] = {"txt": to_txt, "json": to_json, "srt": to_srt, "vtt": to_vtt}


def write_result(
    result: Result, output_dir: str | Path, formats: Sequence[str] = FORMATS, stem: str | None = None
) -> list[Path]:
    """Write ``result`` in each format to ``<output_dir>/<stem>.<format>`` (stem: the input's file name
    without suffix; a relative path such as ``speaker/00001`` writes into that sub-folder). Returns the
    paths written."""
    out = Path(output_dir)
    stem = stem or Path(result.name).stem or "transcript"
    (out / stem).parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        atomic_write_text(path, WRITERS[fmt](result))
        paths.append(path)
    return paths
