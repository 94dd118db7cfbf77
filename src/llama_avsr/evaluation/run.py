"""Evaluate a model on a labelled split: transcripts, WER/CER, SNR sweeps, table, JSON, plot."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from llama_avsr.config import TASKS, rates_key
from llama_avsr.data.batch import blank_streams
from llama_avsr.data.collate import Collator
from llama_avsr.data.config import DataConfig
from llama_avsr.data.dataset import build_dataloader, load_split
from llama_avsr.decoding.options import DecodingOptions
from llama_avsr.decoding.search import decode
from llama_avsr.decoding.streams import check_streams
from llama_avsr.evaluation import report
from llama_avsr.evaluation.metrics import char_errors, word_errors
from llama_avsr.evaluation.report import results_table, speaker_table  # noqa: F401  (re-exported)
from llama_avsr.io import atomic_write_text, atomic_write_with, update_json
from llama_avsr.models.avsr import AVSRModel

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
VIDEO_FPS = 25
#: frame budget of a decoding batch (25 fps frames): large, so `DecodingOptions.batch_size` decides
DECODE_MAX_FRAMES = 1_000_000


def snr_label(snr: float | None) -> str:
    return "clean" if snr is None else f"{snr:g}"


def parse_snrs(text: str) -> list[float | None]:
    """``"clean,10,5,0,-5"`` → ``[None, 10.0, 5.0, 0.0, -5.0]``."""
    out: list[float | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part:
            out.append(None if part in ("clean", "none", "inf") else float(part))
    return out


def decode_split(
    model: AVSRModel,
    data: DataConfig,
    split: str = "test",
    options: DecodingOptions | None = None,
    device: torch.device | str | None = None,
    desc: str = "decoding",
    streams: Sequence[str] | None = None,
    task: str | None = None,
    rates: dict[str, int] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Transcribe a split in length-sorted batches. Returns per-utterance records and speed figures,
    with the cost side: media tokens the LLM reads per second of media and the LLM's prefill FLOPs per
    utterance (2 · non-embedding parameters · input tokens, attention not counted).

    streams: use only these of the model's streams; the others are blanked (``data/batch.py``).
    task, rates: a multi-task / multi-rate model's task and compression rates (default: the model's).
    """
    options = options or DecodingOptions()
    device = device or model.device
    mods = model.cfg.modalities
    keep = check_streams(streams, mods) if model.cfg.tasks is None or task is None else TASKS[task]
    loader = build_dataloader(
        load_split(data, split),
        # decoding batches hold `batch_size` utterances of similar length; the training frame budget
        # does not apply (no gradients are kept)
        dataclasses.replace(data, max_batch_size=options.batch_size, max_frames=DECODE_MAX_FRAMES),
        Collator(model.tokenizer, mods, with_targets=False),
        split,
        modalities=mods,
    )
    model.eval()
    records: list[dict[str, Any]] = []
    media_seconds = 0.0
    start = time.time()
    skipped: list[str] = []
    media_tokens = input_tokens = 0
    with tqdm(total=len(loader.dataset), desc=desc, unit="utt") as bar:
        for batch in loader:
            skipped += [str(s) for s in getattr(batch, "skipped", []) or []]
            if len(batch) == 0:
                continue
            found = decode(model, blank_streams(batch, keep).to(device), options, task, rates)
            hyps = [h.text for h in found]
            media_tokens += sum(h.media_tokens for h in found)
            input_tokens += sum(h.input_tokens for h in found)
            if "audio" in batch.lengths:
                secs = (batch.lengths["audio"].float() / SAMPLE_RATE).tolist()
            else:
                secs = (batch.lengths["video"].float() / VIDEO_FPS).tolist()
            media_seconds += sum(secs)
            for uid, ref, hyp in zip(batch.ids, batch.texts, hyps, strict=True):
                w, c = word_errors(ref, hyp), char_errors(ref, hyp)
                records.append(
                    {
                        "id": uid,
                        "ref": ref,
                        "hyp": hyp,
                        "wer": w.rate,
                        "word_errors": w.errors,
                        "ref_words": w.reference_length,
                        "cer": c.rate,
                    }
                )
            bar.update(len(batch) + len(getattr(batch, "skipped", []) or []))
    elapsed = time.time() - start
    speed = {
        "utterances": len(records),
        "skipped": len(skipped),
        "skipped_ids": skipped,
        "decode_seconds": round(elapsed, 2),
        # the precision the LLM decoded in (its weights'; ``eval --dtype`` casts them)
        "llm_dtype": str(model.llm.get_input_embeddings().weight.dtype).removeprefix("torch."),
        "utterances_per_second": round(len(records) / elapsed, 3) if elapsed else math.inf,
        "real_time_factor": round(elapsed / media_seconds, 4) if media_seconds else math.nan,
        "llm_media_tokens_per_second": round(media_tokens / media_seconds, 3) if media_seconds else math.nan,
        "llm_input_tokens_per_utterance": round(input_tokens / len(records), 2) if records else math.nan,
        "llm_prefill_gflops_per_utterance": (
            round(2 * llm_matmul_params(model) * input_tokens / len(records) / 1e9, 3)
            if records
            else math.nan
        ),
    }
    if skipped:
        log.warning("skipped %d unreadable item(s): %s", len(skipped), skipped[:5])
    return records, speed


def llm_matmul_params(model: AVSRModel) -> int:
    """Parameters the LLM multiplies each input token with (its decoder layers' weights; the
    embedding lookup is free and the output layer is only run where a token is generated)."""
    from llama_avsr.models.llm import base_causal_lm

    decoder = base_causal_lm(model.llm).get_decoder()
    embed = decoder.get_input_embeddings()
    return sum(p.numel() for p in decoder.parameters()) - sum(p.numel() for p in embed.parameters())


def score(records: list[dict[str, Any]]) -> dict[str, Any]:
    """WER/CER with S/I/D counts over decoded records (for speaker groups and skipped items see
    :func:`llama_avsr.evaluation.report.breakdown`)."""
    return {k: v for k, v in report.breakdown(records, None).items() if k.startswith(("wer", "cer"))}


def evaluate(
    model: AVSRModel,
    data: DataConfig,
    out_dir: str | Path,
    snrs: list[float | None] | None = None,
    split: str = "test",
    options: DecodingOptions | None = None,
    label: str = "model",
    skipped_as_errors: bool = False,
    streams: Sequence[str] | None = None,
    task: str | None = None,
    rates: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Decode ``split`` at each SNR (babble noise on the audio; video untouched), write
    ``<out>/<label>_<snr>.jsonl`` per utterance, ``<out>/results.json``, ``<out>/wer_vs_snr.png``.

    Scores per SNR hold the WER over all items, per speaker and for voices seen in training vs held
    out, and the count of skipped (unreadable) items — scored as full errors with ``skipped_as_errors``
    (:mod:`llama_avsr.evaluation.report`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    snrs = snrs if snrs is not None else [data.decode_snr_target]
    used = (
        TASKS[task]
        if task is not None and model.cfg.tasks is not None
        else check_streams(streams, model.cfg.modalities)
    )
    if "audio" not in used and any(s is not None for s in snrs):
        log.info("%s reads no audio: noise does not change its input; decoding once", label)
        snrs = [None]
    results: dict[str, Any] = {}
    seen = report.training_speakers(data)
    for snr in snrs:
        d = dataclasses.replace(data, decode_snr_target=snr)
        records, speed = decode_split(
            model,
            d,
            split,
            options,
            desc=f"{label} @ {snr_label(snr)}",
            streams=streams,
            task=task,
            rates=rates,
        )
        skipped_ids = speed.pop("skipped_ids")
        if skipped_ids:
            records = records + report.skipped_records(skipped_ids, report.references(d, split))
        atomic_write_text(
            out / f"{label}_{snr_label(snr)}.jsonl", "".join(json.dumps(r) + "\n" for r in records)
        )
        results[snr_label(snr)] = {**speed, **report.breakdown(records, seen, skipped_as_errors)}
    summary = {"label": label, "split": split, "modalities": model.cfg.modalities, "by_snr": results}
    if streams is not None:
        summary["streams"] = list(check_streams(streams, model.cfg.modalities))
    if task is not None:
        summary["task"] = task
    if rates is not None:
        summary["rates"] = dict(rates)
    # merged under a lock: concurrent evaluations into one folder keep each other's results
    update_json(
        out / "results.json",
        {label: summary},
        then=lambda merged: plot_wer_vs_snr(
            {k: v["by_snr"] for k, v in merged.items()}, out / "wer_vs_snr.png"
        ),
    )
    log.debug("\n%s", results_table({label: results}))  # the commands print it
    return summary


def plot_wer_vs_snr(by_label: dict[str, dict[str, dict[str, Any]]], path: str | Path) -> None:
    """WER against SNR, one line per model; clean is drawn at the right end (needs matplotlib, which
    ``pip install llama-avsr[demo]`` brings; without it the plot is skipped)."""
    try:
        import matplotlib
    except ImportError:
        log.info("matplotlib not installed: %s not drawn (pip install 'llama-avsr[demo]')", path)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    numeric = sorted({float(s) for r in by_label.values() for s in r if s != "clean"})
    clean_x = (max(numeric) + 5) if numeric else 0.0
    for label, by_snr in by_label.items():
        pts = sorted((clean_x if s == "clean" else float(s), 100 * r["wer"]) for s, r in by_snr.items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ticks = numeric + [clean_x]
    ax.set_xticks(ticks, [f"{t:g}" for t in numeric] + ["clean"])
    _save_wer_figure(fig, ax, "SNR of babble noise (dB)", path)


def evaluate_model_dir(
    model_dir: str | Path,
    data: DataConfig | None = None,
    out_dir: str | Path | None = None,
    snrs: list[float | None] | None = None,
    split: str = "test",
    options: DecodingOptions | None = None,
    label: str | None = None,
    device: str = "auto",
    skipped_as_errors: bool = False,
    streams: Sequence[str] | None = None,
    task: str | None = None,
    rates: dict[str, int] | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Evaluate a model directory; results are also stored beside the model (its card).

    ``dtype``: cast the whole model to it first (``"float32"``: full-precision decoding of a bf16 model;
    ``None`` keeps the saved dtypes). Such a run is labelled ``<label>@<dtype>`` by default and is not
    written into the model directory's card, which keeps the evaluation of the model as saved.

    A multi-task or multi-rate model is evaluated for every task × rate combination (only ``task`` /
    only at ``rates`` when given): returns ``{"grid": [summary, …]}`` with one summary per combination,
    labelled ``<task> <stream><rate>…`` (e.g. ``avsr audio4_video2``)."""
    from llama_avsr.decoding.transcriber import resolve_device
    from llama_avsr.model_dir import load_model_dir, update_results

    model, exp = load_model_dir(model_dir, device=resolve_device(device))
    if dtype is not None:
        from llama_avsr.config import torch_dtype
        from llama_avsr.devices import native_bf16

        cast = torch_dtype(dtype)
        if model.device.type == "cpu" and (
            cast == torch.float16 or (cast == torch.bfloat16 and not native_bf16("cpu"))
        ):
            log.warning("%s on this CPU has no native matrix products: decoding will be slow", dtype)
        model.to(cast)
    card = dtype is None  # the card holds the evaluation of the model as saved

    def tag(name: str) -> str:
        return f"{name}@{dtype}" if dtype is not None else name

    data = data or exp.data
    if out_dir is None:  # beside a local model; for a hub repo id, under ./eval/<owner>__<name>
        local = Path(model_dir)
        out_dir = local / "eval" if local.is_dir() else Path("eval") / str(model_dir).replace("/", "__")
    cfg = model.cfg
    if not (cfg.multi_task or cfg.multi_rate):
        if task is not None:
            cfg.check_task(task)
        cfg.check_rates(rates)
        label = label or tag("+".join(check_streams(streams, model.cfg.modalities)))
        summary = evaluate(
            model, data, out_dir, snrs, split, options or exp.decode, label, skipped_as_errors, streams
        )
        if card:
            update_results(model_dir, {"evaluation": summary})
        return summary
    grid = []
    for t in [cfg.check_task(task)] if task is not None else cfg.task_names:
        combos = [cfg.check_rates(rates, t)] if rates else cfg.rate_combinations(t)
        for r in combos:
            name = tag(f"{label + ' ' if label else ''}{t} {rates_key(r)}")
            grid.append(
                evaluate(
                    model, data, out_dir, snrs, split, options or exp.decode, name, skipped_as_errors,
                    None, t, r,
                )
            )  # fmt: skip
    summary = {"grid": grid}
    plot_wer_vs_tokens(grid, Path(out_dir) / "wer_vs_tokens.png")
    if card:
        update_results(model_dir, {"evaluation": summary})
    return summary


def plot_wer_vs_tokens(grid: list[dict[str, Any]], path: str | Path) -> None:
    """WER against the media tokens the LLM reads per second, one line per task (and SNR), each point a
    rate combination: the accuracy / cost trade-off a multi-rate model offers (needs matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        log.info("matplotlib not installed: %s not drawn (pip install 'llama-avsr[demo]')", path)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[float, float, str]]] = {}
    for g in grid:
        task = g.get("task", g["label"].split()[0])
        for snr, r in g["by_snr"].items():
            name = task if snr == "clean" else f"{task} @ {snr} dB"
            rk = ",".join(f"{k[0]}{v}" for k, v in (g.get("rates") or {}).items())
            lines.setdefault(name, []).append((r["llm_media_tokens_per_second"], 100 * r["wer"], rk))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in lines.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        for x, y, rk in pts:
            ax.annotate(rk, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    _save_wer_figure(fig, ax, "media tokens the LLM reads per second", path)


def _save_wer_figure(fig, ax, xlabel: str, path: Path) -> None:
    """Finish a WER plot (axis labels, grid, legend) and write it as a PNG atomically."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("WER (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write_with(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)
