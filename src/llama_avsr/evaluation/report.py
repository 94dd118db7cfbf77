"""Who is speaking, and what was left out: WER per speaker, for voices seen in training and for held-out
voices, and the items that could not be decoded.

Speaker: the folder that holds the utterance, i.e. the parent of its ``rel_path`` — ``<spk>`` in LRS3's
``test/<spk>/00002.mp4`` and in the synthetic corpus's ``test/spk10/00001.mp4``. A speaker is *seen*
when it has an utterance in the training label CSV (``data.train_csv``), *held out* otherwise. On LRS3
the test speakers are disjoint from trainval/pretrain, so everything is held out; on the synthetic
corpus the validation and test splits mix training voices with voices of their own.

Skipped items (unreadable media) are counted per condition, per group and per speaker; with
``skipped_as_errors`` they are also scored as full errors (every reference word deleted), so that a
model that fails on hard files cannot look better for it.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from llama_avsr.data.config import DataConfig
from llama_avsr.evaluation.metrics import ErrorCounts, char_errors, word_errors

log = logging.getLogger(__name__)

#: the two groups of voices, in table order
GROUPS = ("seen", "held_out")


def speaker_of(utterance_id: str) -> str:
    """The speaker of an utterance id or ``rel_path``: the name of the folder holding it."""
    path = PurePosixPath(str(utterance_id).replace("\\", "/"))
    return path.parent.name or path.name


def training_speakers(data: DataConfig) -> frozenset[str] | None:
    """Speakers with an utterance in the training label CSV, or ``None`` when there is none to read
    (then no utterance is called seen or held out)."""
    if data.train_csv is None:
        return None
    try:
        path = data.csv_path("train")
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            return frozenset(speaker_of(row[1]) for row in csv.reader(f) if len(row) >= 2 and row[1])
    except OSError as e:
        log.warning("seen/held-out voices not reported: cannot read the training labels (%s)", e)
        return None


def skipped_records(skipped_ids: Iterable[str], references: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per-utterance records of items that could not be decoded (``hyp`` None, ``skipped`` True)."""
    return [{"id": i, "ref": references.get(i, ""), "hyp": None, "skipped": True} for i in skipped_ids]


class _Tally:
    def __init__(self) -> None:
        self.words, self.chars = ErrorCounts(), ErrorCounts()
        self.utterances = self.skipped = 0

    def add(self, ref: str, hyp: str | None, score: bool) -> None:
        if hyp is None:
            self.skipped += 1
            if not score:
                return
            hyp = ""
        else:
            self.utterances += 1
        self.words = self.words + word_errors(ref, hyp)
        self.chars = self.chars + char_errors(ref, hyp)

    def summary(self) -> dict[str, Any]:
        return {
            **self.words.as_dict("wer"),
            **self.chars.as_dict("cer"),
            "utterances": self.utterances,
            "skipped": self.skipped,
        }


def breakdown(
    records: Sequence[Mapping[str, Any]],
    seen_speakers: frozenset[str] | None,
    skipped_as_errors: bool = False,
) -> dict[str, Any]:
    """Scores of one decoding condition.

    records: per-utterance ``{"id", "ref", "hyp"}``; skipped items have ``hyp`` None.
    seen_speakers: :func:`training_speakers` (``None``: no seen/held-out split).
    Returns ``wer``/``cer`` with S/I/D counts over all items, ``utterances`` decoded, ``skipped`` and
    ``skipped_scored``; ``groups`` (``seen``, ``held_out``: the same scores plus ``speakers``); and
    ``speakers`` (per speaker: WER, words, utterances, skipped, seen).
    """
    overall = _Tally()
    groups = {g: _Tally() for g in GROUPS}
    members: dict[str, set[str]] = {g: set() for g in GROUPS}
    per_speaker: dict[str, _Tally] = {}
    for r in records:
        spk = speaker_of(r["id"])
        tallies = [overall, per_speaker.setdefault(spk, _Tally())]
        if seen_speakers is not None:
            group = "seen" if spk in seen_speakers else "held_out"
            tallies.append(groups[group])
            members[group].add(spk)
        for t in tallies:
            t.add(r["ref"], r["hyp"], skipped_as_errors)
    out: dict[str, Any] = {**overall.summary(), "skipped_scored": skipped_as_errors}
    if seen_speakers is not None:
        out["groups"] = {g: {**groups[g].summary(), "speakers": len(members[g])} for g in GROUPS}
    out["speakers"] = {
        spk: {
            "wer": t.words.rate,
            "words": t.words.reference_length,
            "utterances": t.utterances,
            "skipped": t.skipped,
            **({"seen": spk in seen_speakers} if seen_speakers is not None else {}),
        }
        for spk, t in sorted(per_speaker.items())
    }
    return out


def _pct(r: Mapping[str, Any] | None) -> str:
    if not r or not r.get("wer_ref"):
        return "-"
    return f"{100 * r['wer']:.2f}"


def results_table(by_label: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """One row per (model, SNR): WER over all items, on voices seen in training and on held-out voices,
    CER, S/I/D, reference words, skipped items and decoding speed."""
    w = max([14, *(len(str(k)) for k in by_label)])
    head = (
        f"{'model':<{w}} {'SNR dB':>7} {'WER %':>7} {'seen %':>7} {'held-out %':>10} {'CER %':>7} "
        f"{'sub':>5} {'ins':>5} {'del':>5} {'words':>6} {'skipped':>7} {'utt/s':>7}"
    )
    lines = [head, "-" * len(head)]
    scored = False
    for label, by_snr in by_label.items():
        for snr, r in by_snr.items():
            groups = r.get("groups") or {}
            skipped = r.get("skipped", 0)
            scored |= bool(skipped and r.get("skipped_scored"))
            lines.append(
                f"{label:<{w}} {snr:>7} {_pct(r):>7} {_pct(groups.get('seen')):>7} "
                f"{_pct(groups.get('held_out')):>10} {100 * r['cer']:>7.2f} {r['wer_sub']:>5} "
                f"{r['wer_ins']:>5} {r['wer_del']:>5} {r['wer_ref']:>6} {skipped:>7} "
                f"{r.get('utterances_per_second', float('nan')):>7.2f}"
            )
    lines.append(
        "seen = voices heard in training, held-out = voices never heard in training; "
        + ("skipped items are scored as full errors" if scored else "skipped items are not in the WER")
    )
    return "\n".join(lines)


def cost_table(grid: list[Mapping[str, Any]]) -> str:
    """The cost side of each task × rate of a multi-rate model: WER beside the media tokens the LLM reads
    per second of media, its input tokens and prefill FLOPs per utterance, and decoding speed."""
    w = max([16, *(len(str(g.get("label", ""))) for g in grid)])
    head = (
        f"{'task and rates':<{w}} {'SNR dB':>7} {'WER %':>7} {'tokens/s media':>14} "
        f"{'tokens/utt':>10} {'GFLOPs/utt':>10} {'utt/s':>7}"
    )
    lines = [head, "-" * len(head)]
    for g in grid:
        for snr, r in g.get("by_snr", {}).items():
            lines.append(
                f"{g.get('label', '?'):<{w}} {snr:>7} {_pct(r):>7} "
                f"{r.get('llm_media_tokens_per_second', float('nan')):>14.2f} "
                f"{r.get('llm_input_tokens_per_utterance', float('nan')):>10.1f} "
                f"{r.get('llm_prefill_gflops_per_utterance', float('nan')):>10.3f} "
                f"{r.get('utterances_per_second', float('nan')):>7.2f}"
            )
    lines.append(
        "tokens/s media = audio/video tokens the LLM reads per second of input; GFLOPs/utt = 2 x LLM "
        "decoder parameters x input tokens (prefill, attention not counted)"
    )
    return "\n".join(lines)


def speaker_table(by_snr: Mapping[str, Mapping[str, Any]]) -> str:
    """WER per speaker (rows) at each SNR (columns), with the speaker's group and word count."""
    snrs = list(by_snr)
    speakers = sorted({s for r in by_snr.values() for s in r.get("speakers", {})})
    head = f"{'speaker':<16} {'voice':<9} {'words':>6} " + " ".join(
        f"{s + ' dB' if s != 'clean' else s:>9}" for s in snrs
    )
    lines = [head, "-" * len(head)]
    for spk in speakers:
        first = next(r["speakers"][spk] for r in by_snr.values() if spk in r.get("speakers", {}))
        voice = {True: "seen", False: "held-out"}.get(first.get("seen"), "?")
        cells = []
        for s in snrs:
            st = by_snr[s].get("speakers", {}).get(spk)
            cell = "-" if not st or not st["words"] else f"{100 * st['wer']:.2f}"
            if st and st["skipped"]:
                cell += f" ({st['skipped']} sk)"
            cells.append(f"{cell:>9}")
        lines.append(f"{spk:<16} {voice:<9} {first['words']:>6} " + " ".join(cells))
    return "\n".join(lines)


def references(data: DataConfig, split: str) -> dict[str, str]:
    """Utterance id → transcript of ``split`` (for skipped items, which reach us as ids only)."""
    from llama_avsr.data.dataset import load_split

    return {u.id: u.text for u in load_split(data, split)}
