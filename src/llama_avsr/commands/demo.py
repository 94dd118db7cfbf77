"""``llama-avsr demo``: the whole job on a laptop, with real small models, from nothing.

1. synthesise a small audio-visual corpus (espeak-ng voices + rendered lips, LRS3 layout);
2. train an AVSR model: Whisper tiny.en (frozen) + a light lip-reading encoder trained from scratch +
   SmolLM2-135M with LoRA (configs/demo/avsr.yaml), in two stages: a VSR model first (the video stream
   and LoRA alone, its lip encoder's frame targets aligned on the soundtrack), then the AVSR model starting
   from its video stream and LoRA (train.init_from), so that the LLM has learnt to read the lips before
   the audio, which it reads far more easily, arrives; each validated on the validation split (greedy WER,
   logged as val/wer), whose lowest-WER weights become the model (train.select: best_val_wer);
3. evaluate on the test split (sentences never seen in training, spoken by training voices and by two
   held-out voices; WER overall, on seen and on held-out voices), clean and in babble noise whose
   talkers differ from the training babble's (the recipe trains with babble noise on part of the audio);
4. transcribe a raw full-face video (face detection and mouth cropping on the fly).

``--full`` trains ASR and VSR models longer, then an AVSR model that starts from their audio and video
streams (and the VSR model's LoRA), and compares the three over an SNR sweep.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

HELP = "synthesise a corpus, train AVSR with the embedded real models, evaluate, transcribe a raw video"
DESCRIPTION = __doc__
EXAMPLES = """\
llama-avsr demo                       # 16 minutes on 2 CPU cores (measured 2026-12-08), results in demo_out/
llama-avsr demo --full -o demo_full   # ASR, VSR, then AVSR from them, compared over SNRs (51 min, 2026-12-07)
llama-avsr demo --minutes 3 train.lr=2e-3
"""

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo" / "avsr.yaml"
#: the models each demo trains, in order: the AVSR model starts from the streams of those trained before it
#: (``train.init_from``; audio-visual systems start from encoders trained on one modality): the default
#: demo trains a VSR model first, then the AVSR model from its video stream and LoRA; ``--full`` an ASR
#: model too, whose audio stream the AVSR model starts from
TASKS_DEFAULT = ("vsr", "avsr")
TASKS_FULL = ("asr", "vsr", "avsr")
#: the parts of the AVSR model that start from the ASR / VSR models, when trained before it. The LoRA comes
#: from the VSR model: the LLM then already reads the lips and learns to read the audio tokens far faster
#: than a fresh LoRA learns the lips (validation split, 300 steps from the ASR and VSR models of a
#: ``--full`` run: 15.6 % WER at 0 dB against 20.1 % with a fresh LoRA; docs/results.md, ninth round)
AVSR_PARTS_FROM = {"audio": "asr", "video": "vsr", "llm": "vsr"}
#: training minutes per model (``--minutes`` sets every one): the default demo's 9 minutes (the recipe's
#: ``train.max_minutes`` before staging) split between the VSR stage and the AVSR model, which has the audio
#: to learn; ``--full``'s AVSR model starts from two trained streams and trains for less
MINUTES_DEFAULT = {"vsr": 4.0, "avsr": 5.0}
MINUTES_FULL = {"asr": 15.0, "vsr": 15.0, "avsr": 10.0}
#: the folder under ``--out`` of the frozen-encoder feature cache that every stage shares
#: (``train.feature_cache``, when the recipe caches)
FEATURES = "features"
#: the label of the AVSR model evaluated with its video blanked (the default demo's audio-only reference)
VIDEO_BLANKED = "avsr-video-blanked"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", default="demo_out", help="working folder (corpus, runs, results)")
    p.add_argument(
        "--full",
        action="store_true",
        help="train ASR, VSR and AVSR longer and compare them over SNRs",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training minutes of every model, after its warm-ups (default: VSR 4 then AVSR 5; with --full "
        "ASR 15, VSR 15, AVSR 10; the recipe's train.max_minutes is not used, a train.max_minutes= override "
        "is)",
    )
    p.add_argument("--train", type=int, default=1200, help="training utterances to synthesise")
    p.add_argument(
        "--val",
        type=int,
        default=100,
        help="validation utterances: validated during training, they choose the final model "
        "(0: no validation, the last weights)",
    )
    p.add_argument(
        "--test", type=int, default=100, help="test utterances (unseen sentences; seen and held-out voices)"
    )
    p.add_argument("--snr", default=None, help="SNRs to evaluate (default: clean,0; --full: clean,10,5,0,-5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus and the training run")
    p.add_argument("--jobs", type=int, default=2, help="processes for corpus synthesis")
    p.add_argument(
        "--config", default=str(DEMO_CONFIG), help="the AVSR recipe to start from (default: demo/avsr)"
    )
    p.add_argument("overrides", nargs="*", help="key.path=value overrides applied to every model")


def task_config(
    base: dict[str, Any],
    task: str,
    out: Path,
    minutes: float,
    overrides: list[str],
    noisy: bool = False,
    init_from: dict[str, str] | None = None,
) -> Any:
    """The demo config cut down to ``task``'s streams. ``noisy``: augment the audio in training (babble
    noise at the recipe's ``data.train_snrs``) even if the recipe does not (``--full``, which compares the
    modalities in noise; demo/avsr already does, in ``data.augment_variants`` fixed variants per utterance
    so that the frozen audio encoder's features are cached). The video's augmentation stays the recipe's.
    ``init_from``: parts (streams, ``llm``) that start from trained model directories
    (``train.init_from``); those streams are not warmed up."""
    from llama_avsr.config import TASKS, apply_overrides
    from llama_avsr.experiment import ExperimentConfig

    d = copy.deepcopy(base)
    d["data"]["root"] = str(out / "corpus")
    d["train"]["out_dir"] = str(out / task)
    d["train"]["max_minutes"] = minutes
    if d["train"].get("feature_cache"):
        # one folder for every stage: the features of a frozen encoder that one stage computes, the next
        # reads (the VSR stage's alignment features are the AVSR stage's warm-up features)
        d["train"]["feature_cache"] = str(out / FEATURES)
    if noisy:
        d["data"]["train_augment"] = sorted({*d["data"].get("train_augment", []), "audio"})
    if init_from:
        d["train"]["init_from"] = {**(d["train"].get("init_from") or {}), **init_from}
    # the user's overrides apply to the whole recipe, before it is cut down: an override of a stream
    # that this task drops is dropped with it, and what follows sees the user's settings
    d = apply_overrides(d, overrides)
    # the streams that read only the task's modalities (config.TASKS: modalities are data)
    streams = d["model"]["streams"]
    keep = [k for k, s in streams.items() if set(s["inputs"]) <= set(TASKS[task])]
    d["model"]["streams"] = {k: streams[k] for k in keep}
    if d["train"].get("init_from"):  # the parts of this task's model
        parts = {k: v for k, v in d["train"]["init_from"].items() if k in keep or k == "llm"}
        d["train"]["init_from"] = parts or None
    if len(keep) < 2:  # one stream: no other modality to fall back on (the dataset ignores it too)
        d["data"].pop("modality_dropout", None)
        d["train"].pop("blank_first_steps", None)
        d["train"].pop("blank_batches", None)
    if "video" not in TASKS[task]:  # no video is loaded: nothing to cache
        d["data"].pop("video_cache_mb", None)
    started = set(d["train"].get("init_from") or {})
    warm = d["train"].get("ctc_warmup_streams")
    if isinstance(warm, dict):  # per-stream warm-up epochs: only the streams this task keeps and trains
        d["train"]["ctc_warmup_streams"] = {k: v for k, v in warm.items() if k in keep and k not in started}
    elif isinstance(warm, list):
        d["train"]["ctc_warmup_streams"] = [k for k in warm if k in keep and k not in started]
    aligners = d["train"].get("warmup_aligners") or {}
    # a VSR model aligns its lip targets on the soundtrack with the dropped audio stream's encoder,
    # built for the warm-up alone (train.aligner_encoders); the model itself reads no audio
    borrowed = {
        k: streams[v]["encoder"] for k, v in aligners.items() if k in keep and v not in keep and v in streams
    }
    if borrowed:
        d["train"]["aligner_encoders"] = {
            **(d["train"].get("aligner_encoders") or {}),
            **{e: d["model"]["encoders"][e] for e in borrowed.values()},
        }
        d["train"]["warmup_aligners"] = {**aligners, **borrowed}
    for key in ("warmup_teachers", "warmup_token_teachers", "warmup_aligners"):
        teachers = d["train"].get(key)
        if teachers:  # distillation needs both streams: an ASR or VSR model keeps none
            fine = (
                set(keep) | set(d["train"].get("aligner_encoders") or {})
                if key == "warmup_aligners"
                else set(keep)
            )
            d["train"][key] = {
                k: v for k, v in teachers.items() if k in keep and k not in started and v in fine
            } or None
    if d["train"].get("aligner_encoders"):  # only the alignment encoders a kept warm-up still uses
        used_aligners = set((d["train"].get("warmup_aligners") or {}).values())
        d["train"]["aligner_encoders"] = {
            k: v for k, v in d["train"]["aligner_encoders"].items() if k in used_aligners
        } or None
    used = {s["encoder"] for s in d["model"]["streams"].values()}
    d["model"]["encoders"] = {k: v for k, v in d["model"]["encoders"].items() if k in used}
    return ExperimentConfig.from_dict(d)


def stage_init(task: str, trained: dict[str, Path]) -> dict[str, str] | None:
    """``train.init_from`` of ``task`` when the models ``trained`` (task → model directory) come before
    it: the AVSR model starts from each part of :data:`AVSR_PARTS_FROM` whose source model is there."""
    if task != "avsr":
        return None
    return {k: str(trained[v]) for k, v in AVSR_PARTS_FROM.items() if v in trained} or None


def demo_overrides(n_val: int, overrides: list[str]) -> list[str]:
    """The user's overrides, after what ``--val`` implies: with no validation utterances nothing is
    validated and the last weights are the model (the recipe's ``train.select: best_val_wer`` needs a
    validation split)."""
    return (["data.val_csv=null", "train.select=last"] if n_val == 0 else []) + list(overrides)


def run(args: argparse.Namespace) -> int:
    from llama_avsr.config import find_recipe, load_yaml
    from llama_avsr.evaluation.run import evaluate_model_dir, parse_snrs, plot_wer_vs_snr, results_table
    from llama_avsr.io import atomic_write_json
    from llama_avsr.synth.corpus import MANIFEST, SynthConfig, generate
    from llama_avsr.training.run import train

    t0 = time.time()
    out = Path(args.out)
    corpus = out / "corpus"
    scfg = SynthConfig(
        out=corpus,
        n_train=args.train,
        n_val=args.val,
        n_test=args.test,
        n_faces=2,
        seed=args.seed,
        jobs=args.jobs,
    )
    manifest_file = corpus / MANIFEST
    if manifest_file.is_file() and json.loads(manifest_file.read_text()).get("counts") == {
        "train": scfg.n_train,
        "val": scfg.n_val,
        "test": scfg.n_test,
        "faces": scfg.n_faces,
    }:
        log.warning("[1/4] corpus already in %s — reusing it", corpus)
        manifest = json.loads(manifest_file.read_text())
    else:
        log.warning(
            "[1/4] synthesising %d train / %d validation / %d test utterances into %s",
            args.train,
            args.val,
            args.test,
            corpus,
        )
        manifest = generate(scfg)

    base = load_yaml(find_recipe(args.config))
    tasks = list(TASKS_FULL if args.full else TASKS_DEFAULT)
    minutes = MINUTES_FULL if args.full else MINUTES_DEFAULT
    overrides = demo_overrides(args.val, args.overrides)
    snrs = parse_snrs(args.snr or ("clean,10,5,0,-5" if args.full else "clean,0"))
    summaries: dict[str, Any] = {}
    speeds: dict[str, Any] = {}
    # every stage's config first: a mistake in the recipe or the overrides stops the demo before any
    # training, not after the first stage
    plan: list[tuple[str, Any]] = []
    planned: dict[str, Path] = {}
    for task in tasks:
        budget = args.minutes if args.minutes is not None else minutes[task]
        exp = task_config(
            base, task, out, budget, overrides, noisy=args.full, init_from=stage_init(task, planned)
        )
        exp.train.seed = args.seed
        planned[task] = Path(exp.train.out_dir) / "model"
        plan.append((task, exp))
    sources = {v: k.upper() for k, v in planned.items()}  # model directory → the stage that writes it
    for i, (task, exp) in enumerate(plan):
        init = exp.train.init_from or {}
        log.warning(
            "[2/4] training %s (%d/%d)%s%s → %s",
            task.upper(),
            i + 1,
            len(tasks),
            f" for up to {exp.train.max_minutes:g} min" if exp.train.max_minutes else "",
            (", starting from " + ", ".join(f"{k} of {sources.get(Path(v), v)}" for k, v in init.items()))
            if init
            else "",
            exp.train.out_dir,
        )
        model_dir = train(exp)
        log.warning(
            "[3/4] evaluating %s at SNR %s",
            task.upper(),
            args.snr or ",".join("clean" if s is None else f"{s:g}" for s in snrs),
        )
        summary = evaluate_model_dir(model_dir, exp.data, out / "eval", snrs, "test", exp.decode, label=task)
        summaries[task] = summary["by_snr"]
        if task == "avsr" and "asr" not in tasks:
            # no ASR model trained: the audio-only reference is the same AVSR model with its video blanked
            # (as modality dropout blanks it in training) — reported under that name, not as ASR
            blanked = dataclasses.replace(exp.data, blank_modalities=["video"])
            summary = evaluate_model_dir(
                model_dir, blanked, out / "eval", snrs, "test", exp.decode, label=VIDEO_BLANKED
            )
            summaries[VIDEO_BLANKED] = summary["by_snr"]
        stats = json.loads((model_dir / "results.json").read_text())["training"]
        speeds[task] = stats

    log.warning("[4/4] transcribing a raw full-face video with the AVSR model")
    face = manifest["faces"][0] if manifest.get("faces") else None
    transcript = None
    if face:
        video = next(
            p for p in (corpus / manifest["dataset"] / face["video"], corpus / face["video"]) if p.exists()
        )
        transcript = transcribe_file(out / "avsr" / "model", video)
        log.warning("raw video %s\n  reference:  %s\n  transcript: %s", video, face["text"], transcript)

    plot_wer_vs_snr(summaries, out / "wer_vs_snr.png")
    lines = [
        "",
        "Llama-AVSR demo results (test split: sentences unseen in training; WER over all utterances, "
        "on voices heard in training and on held-out voices)",
        comparison_table(summaries),
        "",
        results_table(summaries),
        "",
    ]
    for task, st in speeds.items():
        best = summaries[task][next(iter(summaries[task]))]
        lines.append(
            f"{task.upper()}: trained {st['train_steps']} steps on {st.get('train_utterances', '?')} utterances in "
            f"{st['train_seconds']:.0f} s ({st.get('train_utterances_per_second', 0):.1f} utt/s); decoding "
            f"{best['utterances_per_second']:.2f} utt/s (real-time factor {best['real_time_factor']:.3f})"
        )
        if st.get("val_wer"):
            lines.append("  " + validation_line(st, args.val))
    if transcript is not None:
        lines.append(f'raw video → "{transcript}"  (reference: "{face["text"]}")')
    lines.append(
        f"total time {time.time() - t0:.0f} s; results in {out / 'eval'}, plot {out / 'wer_vs_snr.png'}"
    )
    print("\n".join(lines))  # noqa: T201
    atomic_write_json(
        out / "demo_results.json",
        {
            "wer": summaries,
            "training": speeds,
            "raw_video": {"transcript": transcript, "reference": face and face["text"]},
            "seconds": round(time.time() - t0, 1),
        },
    )
    return 0


def validation_line(training: dict[str, Any], n_val: int) -> str:
    """The validation WER of each validation during training and the weights chosen for the model."""
    curve = ", ".join(f"step {v['step']}: {100 * v['wer']:.2f} %" for v in training["val_wer"])
    sel = training.get("selection") or {}
    chosen = f"step {sel['step']}" if "step" in sel else ", ".join(sel.get("checkpoints", [])) or "?"
    return (
        f"validation WER ({n_val} utterances, greedy; chooses the model, not a test result): {curve}; "
        f"final model: {chosen} ({sel.get('select', '?')})"
    )


def comparison_table(summaries: dict[str, dict[str, dict[str, Any]]]) -> str:
    """AVSR against its audio-only reference per SNR, with the WER ratio (lower = the video helps more):
    the ASR model when one was trained (``--full``), else the AVSR model with its video blanked (labelled
    so). VSR's WER is added when a VSR model was trained."""
    ref = "asr" if "asr" in summaries else VIDEO_BLANKED
    if "avsr" not in summaries or ref not in summaries:
        return ""
    ref_name = "ASR" if ref == "asr" else "AVSR, video blanked"
    vsr = summaries.get("vsr", {}).get("clean")
    ratio_name = "AVSR/ASR ratio" if ref == "asr" else "AVSR/blanked ratio"
    head = f"{'SNR dB':>7} {ref_name + ' WER %':>26} {'AVSR WER %':>11} {ratio_name:>18}"
    head += f" {'VSR WER %':>10}" if vsr else ""
    lines = [head, "-" * len(head)]
    for snr, r in summaries["avsr"].items():
        if snr not in summaries[ref]:
            continue
        a, b = r["wer"], summaries[ref][snr]["wer"]
        ratio = f"{a / b:.2f}" if b > 0 else "-"
        row = f"{snr:>7} {100 * b:>26.2f} {100 * a:>11.2f} {ratio:>18}"
        lines.append(row + (f" {100 * vsr['wer']:>10.2f}" if vsr else ""))
    return "\n".join(lines)


def transcribe_file(model_dir: Path, video: Path) -> str:
    """A raw full-face video → text, through the same path as ``llama-avsr transcribe``."""
    from llama_avsr.decoding.transcriber import load_model

    return load_model(model_dir, device="auto").transcribe(video).text
