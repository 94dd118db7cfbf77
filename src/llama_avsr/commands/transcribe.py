"""``llama-avsr transcribe``: raw videos or audio files → text, with a trained model directory."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

HELP = "transcribe raw videos (prepared on the fly) or audio files with a trained model"
DESCRIPTION = (
    HELP + ". A raw video (any size / frame rate, with audio) goes through the same preparation as "
    "`llama-avsr prepare` (face detection, mouth ROI, 16 kHz audio); an audio file (wav, flac, mp3, …) "
    "works with audio-only models. Files that cannot be used are reported and skipped."
)
EXAMPLES = """\
llama-avsr transcribe --model runs/paper-avsr/model my_video.mp4 interview.mp4
llama-avsr transcribe --model runs/demo-asr/model speech.wav --json
"""

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", help="video or audio files")
    p.add_argument(
        "--model",
        required=True,
        help="model directory (written by `llama-avsr train` / `import-reference`) or a hub repo id",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per file instead of text")
    p.add_argument(
        "--prepared", action="store_true", help="the videos are already 96×96 mouth ROIs at 25 fps"
    )
    p.add_argument("--detector", default="mediapipe-mesh", help="face detector backend for raw videos")
    p.add_argument("--beams", type=int, default=None, help="beam size (default: the model's decode config)")
    p.add_argument("--snr", type=float, default=None, help="add babble noise at this SNR in dB (testing)")
    p.add_argument(
        "--device", default="auto", help="torch device: auto (a GPU when there is one), cpu, cuda:0, …"
    )


def load_inputs(path: Path, modalities: list[str], prepared: bool, detector: str):
    """Decode one file into raw modality arrays: video (T,96,96) uint8 gray 25 fps, audio (T_a,) 16 kHz."""
    import torch

    from llama_avsr import media
    from llama_avsr.data.dataset import cut_or_pad

    raw: dict[str, torch.Tensor] = {}
    is_audio_file = path.suffix.lower() in AUDIO_SUFFIXES
    if "video" in modalities:
        if is_audio_file:
            raise media.MediaError(f"{path}: this model needs video, but the file is audio only")
        if prepared:
            frames, fps = media.read_video(path, gray=True)
            raw["video"] = torch.from_numpy(media.resample_frames(frames, fps))
            if "audio" in modalities:
                raw["audio"] = torch.from_numpy(
                    media.read_audio(path.with_suffix(".wav") if path.with_suffix(".wav").exists() else path)
                )
        else:
            from llama_avsr.prepare.pipeline import prepare_video

            rois, audio = prepare_video(path, detector, allow_no_audio="audio" not in modalities)
            raw["video"] = torch.from_numpy(rois)
            if "audio" in modalities:
                raw["audio"] = torch.from_numpy(audio)
        if "audio" in raw:
            raw["audio"] = cut_or_pad(raw["audio"], raw["video"].shape[0] * 640)
    else:
        raw["audio"] = torch.from_numpy(media.read_audio(path))
    return raw


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from llama_avsr.commands import resolve_device
    from llama_avsr.data.collate import Collator
    from llama_avsr.data.transforms import build_transforms
    from llama_avsr.model_dir import load_model_dir
    from llama_avsr.training.module import audio_variant

    args.device = resolve_device(args.device)
    model, exp = load_model_dir(args.model, device=args.device)
    mods = model.cfg.modalities
    data = dataclasses.replace(exp.data, decode_snr_target=args.snr)
    transforms = build_transforms("test", mods, data, audio_variant(model))
    options = exp.decode if args.beams is None else dataclasses.replace(exp.decode, num_beams=args.beams)
    collate = Collator(model.tokenizer, mods, with_targets=False)
    gen = torch.Generator().manual_seed(0)
    failures = 0
    for f in args.files:
        path = Path(f)
        try:
            raw = load_inputs(path, mods, args.prepared, args.detector)
        except (ValueError, OSError) as e:  # MediaError / PrepareError are ValueErrors naming the file
            failures += 1
            log.error("%s", e)
            if args.json:
                print(json.dumps({"file": str(path), "error": str(e)}))  # noqa: T201
            continue
        sample = {"id": str(path), "text": ""}
        sample.update({m: transforms[m](x, gen).float() for m, x in raw.items()})
        text = model.generate(collate([sample]).to(args.device), options)[0]
        if args.json:
            secs = raw["audio"].shape[0] / 16000 if "audio" in raw else raw["video"].shape[0] / 25
            print(json.dumps({"file": str(path), "text": text, "seconds": round(secs, 2)}))  # noqa: T201
        else:
            print(f"{path}\t{text}")  # noqa: T201
        sys.stdout.flush()
    return 1 if failures == len(args.files) else 0
