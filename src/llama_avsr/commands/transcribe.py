"""``llama-avsr transcribe``: videos or audio files (files, folders, globs) → text and subtitles."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
from pathlib import Path

from llama_avsr.commands.argtypes import positive_int, rate_map
from llama_avsr.config import TASKS

HELP = "transcribe videos or audio files (files, folders, globs) with a trained model"
DESCRIPTION = (
    HELP + ". A raw video (any size / frame rate, with audio) goes through the same preparation as "
    "`llama-avsr prepare` (face detection, mouth ROI, 16 kHz audio); a 96x96 mouth-ROI video is read as "
    "it is; an audio file works with audio-only models. Recordings longer than --max-segment are cut at "
    "pauses (voice-activity detection) and decoded in batches. One result line per file; files that "
    "cannot be used are reported and skipped."
)
EXAMPLES = """\
llama-avsr transcribe --model runs/paper-avsr/model my_video.mp4 interview.mp4
llama-avsr transcribe --model runs/demo-asr/model speech.wav --json
llama-avsr transcribe --model runs/exp/model videos/ 'more/*.mp4' --output-dir subs --output-format srt,vtt
llama-avsr transcribe --model runs/demo-omni/model talk.mp4 --task vsr --rates video=5
"""

log = logging.getLogger(__name__)

#: suffixes collected from folders and globs
MEDIA_SUFFIXES = frozenset(
    {".mp4", ".mkv", ".avi", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv", ".ts"}
    | {".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus"}
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", help="video or audio files, folders (searched recursively) or globs")
    p.add_argument(
        "--model",
        required=True,
        help="model directory (written by `llama-avsr train` / `import-reference`) or a hub repo id",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per file instead of text")
    p.add_argument(
        "--output-dir",
        "-o",
        default=None,
        help="write <file stem>.<format> files here (files found in a folder: their path below it)",
    )
    p.add_argument(
        "--output-format",
        "-f",
        default=None,
        help="with --output-dir: comma-separated txt, json, srt, vtt, or all (default: all)",
    )
    p.add_argument(
        "--prepared",
        action="store_true",
        default=None,
        help="the videos are 96x96 mouth ROIs at 25 fps (default: decided from the frame size)",
    )
    p.add_argument("--detector", default="mediapipe-mesh", help="face detector backend for raw videos")
    p.add_argument(
        "--beams", type=positive_int, default=None, help="beam size (default: the model's decode config)"
    )
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=None, help="longest transcript of a segment"
    )
    p.add_argument("--batch-size", type=positive_int, default=None, help="segments decoded together")
    p.add_argument(
        "--streams", default=None, help="use only these streams, e.g. audio (the others are blanked)"
    )
    p.add_argument(
        "--task",
        choices=tuple(TASKS),
        default=None,
        help="multi-task models: the task (default: decided by the streams each file has)",
    )
    p.add_argument(
        "--rates",
        type=rate_map,
        default=None,
        help="multi-rate models: compression rate per stream, e.g. audio=16,video=5 (fewer LLM tokens: "
        "faster, usually less accurate; default: each stream's configured ratio)",
    )
    p.add_argument(
        "--max-segment",
        type=float,
        default=None,
        help="cut longer recordings into segments of at most this many seconds (default: the model's decode.max_segment_seconds, 16 s unless set)",
    )
    p.add_argument(
        "--vad", choices=("auto", "silero", "energy"), default="auto", help="voice-activity detector"
    )
    p.add_argument("--snr", type=float, default=None, help="add babble noise at this SNR in dB (testing)")
    p.add_argument(
        "--device", default="auto", help="torch device: auto (a GPU when there is one), cpu, cuda:0, …"
    )


def expand_inputs(specs: list[str]) -> tuple[dict[Path, Path], list[str]]:
    """Files, folders (media files inside, recursively, sorted) and globs → ({path: output name}, specs
    matching nothing). The output name (no suffix) is the file's stem, or for a file found in a folder
    argument its path below that folder, so that ``speaker/00001.mp4`` and ``other/00001.mp4`` (LRS3's
    layout) do not write the same files."""
    found: dict[Path, Path] = {}
    missing: list[str] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES)
            names = [f.relative_to(p).with_suffix("") for f in files]
        elif p.exists():
            files, names = [p], [Path(p.stem)]
        elif glob.has_magic(spec):
            files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
            files = [f for f in files if f.suffix.lower() in MEDIA_SUFFIXES]
            names = [Path(f.stem) for f in files]
        else:
            files, names = [], []
        if not files:
            missing.append(spec)
        for f, name in zip(files, names, strict=True):
            found.setdefault(f, name)
    return found, missing


def output_names(found: dict[Path, Path]) -> dict[Path, str]:
    """Each input's output name, unique: the name :func:`expand_inputs` gave it; inputs that share one get
    their file's suffix too (``talk.mp4`` / ``talk.wav``). Two inputs still sharing a name are a
    :class:`~llama_avsr.errors.UserError` (one would overwrite the other's files)."""
    from collections import Counter

    from llama_avsr.errors import UserError

    count = Counter(found.values())
    names = {f: (n.with_name(f.name) if count[n] > 1 else n).as_posix() for f, n in found.items()}
    clash: dict[str, list[Path]] = {}
    for f, n in names.items():
        clash.setdefault(n, []).append(f)
    for n, files in clash.items():
        if len(files) > 1:
            raise UserError(
                f"{files[0]} and {files[1]} would write the same output files ({n}.*): give their "
                "folder instead of a glob, or transcribe them with different --output-dir"
            )
    return names


def run(args: argparse.Namespace) -> int:
    from llama_avsr.config import TASKS
    from llama_avsr.decoding.media import MediaError, load_media
    from llama_avsr.decoding.streams import check_streams
    from llama_avsr.decoding.transcriber import load_model
    from llama_avsr.decoding.writers import parse_formats, write_result
    from llama_avsr.errors import UserError

    if args.output_format is not None and not args.output_dir:
        raise UserError("--output-format says which files --output-dir gets: give --output-dir too")
    try:
        formats = parse_formats(args.output_format or "all")
    except ValueError as e:
        raise UserError(f"--output-format: {e}") from e
    found, missing = expand_inputs(args.files)
    paths = list(found)
    stems = output_names(found) if args.output_dir else {}
    failures = len(missing)
    for spec in missing:
        msg = f"{spec}: file not found" if not glob.has_magic(spec) else f"{spec}: no media file matches"
        _report_error(args, spec, msg)
    if not paths:
        return 1
    model = load_model(args.model, device=args.device)
    keep = check_streams(args.streams, model.modalities)
    cfg = model.model.cfg
    try:
        if args.task is not None:
            cfg.check_task(args.task)
        cfg.check_rates(args.rates)
    except ValueError as e:
        raise UserError(str(e)) from e
    # a multi-task model reads what each file has (its task follows), unless told the task or streams
    multi = cfg.tasks is not None and args.streams is None
    needed = (TASKS[args.task] if args.task else None) if multi else model.needed(keep)
    options = {
        "beams": args.beams,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "streams": None if multi else keep,
        "task": args.task,
        "rates": args.rates,
        "snr": args.snr,
        "max_segment_seconds": args.max_segment,
        "vad": args.vad,
        "progress": sys.stderr.isatty(),
    }
    group = model.options(batch_size=args.batch_size).batch_size
    # files are read a group at a time, so that the segments of short files share batches
    for i in range(0, len(paths), group):
        medias = []
        for path in paths[i : i + group]:
            try:
                medias.append(load_media(path, needed, prepared=args.prepared, detector=args.detector))
            except (MediaError, OSError) as e:
                failures += 1
                _report_error(args, str(path), str(e))
        if not medias:
            continue
        results = []
        try:
            results = model.transcribe(medias, **options)
        except MediaError:  # one input lacks a stream the model reads: find it, keep the others
            for m in medias:
                try:
                    results.append(model.transcribe(m, **options))
                except MediaError as e:
                    failures += 1
                    _report_error(args, m.name, str(e))
        for r in results:
            if args.output_dir:
                write_result(r, args.output_dir, formats, stem=stems.get(Path(r.name)))
            if args.json:
                print(json.dumps(r.to_dict(), ensure_ascii=False))  # noqa: T201
            else:
                print(f"{r.name}\t{r.text}")  # noqa: T201
            sys.stdout.flush()
    return 1 if failures == len(paths) + len(missing) else 0


def _report_error(args: argparse.Namespace, name: str, msg: str) -> None:
    log.error("%s", msg)
    if args.json:
        print(json.dumps({"file": name, "error": msg}))  # noqa: T201
        sys.stdout.flush()
