"""``llama-avsr serve``: a local web demo — upload or record a video, see the mouth crop and the
transcript, add noise and watch the lips help."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "a local web page to try a model on your own video, with noise (Gradio)"
DESCRIPTION = (
    HELP + ". Upload a video, record one with the webcam and microphone, or pick an example; the page "
    "shows the mouth crop and waveform the model gets, the transcript with every stream and (for an "
    "audio-visual model) with the video or the audio blanked, with decoding times; a noise slider mixes "
    "babble or your own noise file into the audio and transcribes again; with a reference typed in, it "
    "plots WER against SNR for the clip. Works offline; binds to localhost unless told otherwise."
)
EXAMPLES = """\
llama-avsr serve --model demo_out/avsr/model          # the model `llama-avsr demo` trains
llama-avsr serve --model owner/repo --port 7861 --examples my_clips/
llama-avsr serve --model runs/paper-avsr/model --host 0.0.0.0   # reachable from other machines
"""

log = logging.getLogger(__name__)

#: where `llama-avsr demo` leaves its model and corpus (used when --model / --examples are not given)
DEMO_MODEL = Path("demo_out/avsr/model")
DEMO_CORPUS = Path("demo_out/corpus")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help=f"model directory or hub repo id (default: {DEMO_MODEL}, the model `llama-avsr demo` trains)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 127.0.0.1 serves this machine only")
    p.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860 on)")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA, MPS or CPU), cpu, cuda:0, …")
    p.add_argument("--beams", type=int, default=None, help="beam size (default: the model's decode config)")
    p.add_argument(
        "--examples",
        default=None,
        help=f"example clips: a corpus made by `llama-avsr synth`/`demo` (its full-face videos) or a folder "
        f"of videos with .txt transcripts beside them (default: {DEMO_CORPUS} when present)",
    )
    p.add_argument(
        "--sweep-snrs",
        default="-5,0,5,10,20,clean",
        help="SNRs (dB) of the page's WER-vs-SNR sweep",
    )
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest upload accepted, in MB")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=300.0,
        help="longest clip accepted, in seconds (long clips are decoded in segments)",
    )


def run(args: argparse.Namespace) -> int:
    import importlib.util

    import llama_avsr
    from llama_avsr.evaluation.run import parse_snrs
    from llama_avsr.web.app import Page, find_examples, launch
    from llama_avsr.web.demo import Demo, Limits

    if importlib.util.find_spec("gradio") is None:
        log.error("the web demo needs Gradio: pip install 'llama-avsr[web]'")
        return 2
    if args.beams is not None and args.beams < 1:
        log.error("--beams must be at least 1")
        return 2
    try:
        limits = Limits(args.max_upload_mb, args.max_seconds)
    except ValueError as e:
        log.error("%s", e)
        return 2
    try:
        sweep_snrs = parse_snrs(args.sweep_snrs)
    except ValueError as e:
        log.error("--sweep-snrs %s: %s", args.sweep_snrs, e)
        return 2
    if not sweep_snrs:
        log.error("--sweep-snrs names no SNR")
        return 2
    name = args.model or str(DEMO_MODEL)
    if args.model is None and not DEMO_MODEL.is_dir():
        log.error(
            "no --model given and no %s here (run `llama-avsr demo` first, or pass --model)", DEMO_MODEL
        )
        return 2
    examples_root = args.examples or (DEMO_CORPUS if DEMO_CORPUS.is_dir() else None)
    examples = find_examples(examples_root)
    if args.examples and not examples:
        log.warning("%s: no example clips found there", args.examples)
    log.warning("loading %s …", name)
    try:
        model = llama_avsr.load_model(name, device=args.device)
    except (ValueError, OSError) as e:  # a missing / broken model directory, an unknown device
        log.error("%s", e)
        return 1
    page = Page(Demo(model, beams=args.beams, limits=limits, examples=examples, sweep_snrs=sweep_snrs))
    try:
        launch(page, host=args.host, port=args.port, model_name=name)
    except OSError as e:  # the port is taken, the address cannot be bound
        log.error("cannot serve on %s:%s: %s", args.host, args.port or "7860+", e)
        return 1
    return 0
