"""``llama-avsr prepare``: raw videos → mouth ROI + 16 kHz audio + label CSV (the corpus layout)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "raw videos → 96×96 mouth-ROI videos at 25 fps, 16 kHz wavs and a label CSV"
DESCRIPTION = (
    "Detect the face in every frame, align it to a mean face and crop the mouth (the auto_avsr recipe), "
    "and write <out>/<dataset>/<rel>.mp4 (96×96 gray, 25 fps), <rel>.wav (16 kHz mono) and "
    "<out>/labels/<dataset>.csv (dataset,rel_path,frames,0,text; text from <stem>.txt beside the video, "
    "empty when there is none). Finished outputs are skipped on a re-run; bad inputs are skipped and "
    "reported (<out>/labels/<dataset>.prepare.json) unless --fail-fast. With --splits FILE, "
    "--split-by-folder or --split-ratio it also writes <dataset>_train.csv, _val.csv and _test.csv beside "
    "the CSV (for data.train_csv / val_csv / test_csv), optionally without train/val utterances longer "
    "than --max-seconds (the published seg16s label files' length filter; the test split stays whole)."
)
EXAMPLES = """\
llama-avsr prepare videos/ -o corpus --dataset mine --split-ratio 0.9,0.05,0.05 --max-seconds 16
llama-avsr prepare /data/LRS3 -o lrs3 --dataset lrs3 --split-by-folder --max-seconds 16 -j 8
llama-avsr prepare --list files.txt --root /data/vox2 -o corpus --dataset vox2 --splits splits.txt
"""

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from llama_avsr.prepare.pipeline import RoiConfig

    defaults = RoiConfig()
    p.add_argument(
        "inputs", nargs="*", type=Path, help="video files and/or directories (searched recursively)"
    )
    p.add_argument("--list", type=Path, help="a text file with one video path per line (added to INPUTS)")
    p.add_argument("--root", type=Path, help="output paths of file inputs are kept relative to this folder")
    p.add_argument("-o", "--out", type=Path, required=True, help="corpus root to write")
    p.add_argument("--dataset", default="custom", help="dataset name: first CSV field and folder under --out")
    p.add_argument(
        "--detector",
        default=defaults.detector,
        help="face detector backend: mediapipe-mesh, mediapipe (auto_avsr's keypoints) or dlib",
    )
    p.add_argument("-j", "--jobs", type=int, default=1, help="parallel worker processes")
    p.add_argument("--fps", type=float, default=defaults.fps, help="output frame rate")
    p.add_argument(
        "--max-missing",
        type=float,
        default=defaults.max_missing,
        help="skip a video when more than this fraction of its frames has no detected face",
    )
    p.add_argument("--window", type=int, default=defaults.window, help="landmark smoothing window (frames)")
    p.add_argument(
        "--mean-face", type=Path, help="a (68, 2) .npy mean face, e.g. auto_avsr's 20words_mean_face.npy"
    )
    p.add_argument(
        "--allow-no-audio", action="store_true", help="write the ROI video alone for inputs without audio"
    )
    p.add_argument(
        "--fail-fast", action="store_true", help="stop at the first bad input instead of skipping it"
    )
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose outputs already exist")
    p.add_argument("--csv", type=Path, help="label CSV path (default <out>/labels/<dataset>.csv)")
    p.add_argument(
        "--report", type=Path, help="JSON report path (default <out>/labels/<dataset>.prepare.json)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    split = p.add_argument_group("train / val / test label files")
    how = split.add_mutually_exclusive_group()
    how.add_argument(
        "--splits",
        type=Path,
        metavar="FILE",
        help="a split file: one '<train|val|test> <rel_path>' line a video",
    )
    how.add_argument(
        "--split-by-folder",
        action="store_true",
        help="the first folder of each output path names its split (LRS3: pretrain/trainval → train, test)",
    )
    how.add_argument(
        "--split-ratio",
        metavar="TRAIN,VAL,TEST",
        help="deal whole speakers (the folder holding each video) to the splits in these proportions",
    )
    split.add_argument(
        "--split-seed", type=int, default=0, help="seed of the speaker shuffle (--split-ratio)"
    )
    split.add_argument(
        "--max-seconds", type=float, default=None, help="leave train/val utterances longer than this out"
    )


def run(args: argparse.Namespace) -> int:
    from llama_avsr.prepare.detectors import DetectorUnavailable
    from llama_avsr.prepare.pipeline import PrepareError, PrepareOptions, RoiConfig, prepare_corpus

    splitting = args.splits or args.split_by_folder or args.split_ratio
    if args.max_seconds is not None and not splitting:
        log.error(
            "--max-seconds filters the train/val splits: add --splits, --split-by-folder or --split-ratio"
        )
        return 2
    inputs: list[Path] = list(args.inputs)
    if args.list:
        lines = args.list.read_text(encoding="utf-8").splitlines()
        inputs += [Path(s.strip()) for s in lines if s.strip() and not s.lstrip().startswith("#")]
    if not inputs:
        log.error("no inputs: give video files or directories, or --list")
        return 2
    try:
        options = PrepareOptions(
            out=args.out,
            dataset=args.dataset,
            roi=RoiConfig(
                detector=args.detector,
                fps=args.fps,
                max_missing=args.max_missing,
                window=args.window,
                mean_face=str(args.mean_face) if args.mean_face else None,
            ),
            jobs=args.jobs,
            allow_no_audio=args.allow_no_audio,
            fail_fast=args.fail_fast,
            overwrite=args.overwrite,
            csv=args.csv,
            report=args.report,
        )
        report = prepare_corpus(inputs, options, root=args.root, progress=not args.no_progress)
    except PrepareError as e:
        log.error("stopped (--fail-fast): %s", e)
        return 1
    except (ValueError, KeyError, DetectorUnavailable) as e:
        log.error("%s", e)
        return 2
    ok = report.counts()["done"] + report.counts()["exists"] > 0 or not report.items
    if ok and splitting:
        try:
            write_split_files(args, options)
        except ValueError as e:
            log.error("%s", e)
            return 2
    return 0 if ok else 1


def write_split_files(args: argparse.Namespace, options) -> None:
    from llama_avsr.io import atomic_write_text
    from llama_avsr.media import VIDEO_FPS
    from llama_avsr.prepare import splits

    csv = options.csv_path
    rel = [
        line.split(",", 4)[1] for line in csv.read_text(encoding="utf-8").splitlines() if line.count(",") >= 4
    ]
    if args.splits:
        assign = splits.by_file(rel, args.splits)
    elif args.split_by_folder:
        assign = splits.by_folder(rel)
    else:
        try:
            ratios = tuple(float(x) for x in args.split_ratio.split(","))
        except ValueError:
            raise ValueError(
                f"--split-ratio takes three numbers like 0.9,0.05,0.05, got {args.split_ratio!r}"
            ) from None
        assign = splits.by_ratio(rel, ratios, args.split_seed)  # type: ignore[arg-type]
    max_frames = None if args.max_seconds is None else int(args.max_seconds * VIDEO_FPS)
    report = splits.write_splits(csv, assign, max_frames=max_frames, write=atomic_write_text)
    print(f"{report.summary()} ({', '.join(report.files.values())})")  # noqa: T201
