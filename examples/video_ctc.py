"""Does a from-scratch video encoder learn to lip-read? Video CTC at equal optimiser steps (issue 14).

Trains a video encoder of the registry (``lipconv`` or the demo's ``avhubert``) with a linear CTC head
over the training transcripts' LLM tokens (or characters), at the encoder's own 25 Hz or after stacking
k frames (the demo's video stream uses k = 5), and prints the CTC loss every 50 steps and the greedy
token (character) error rate on the validation split every 150. Also ``--speed``: seconds per
forward + backward of the video path alone, float32 and bf16 autocast, both encoders in one run.

    llama-avsr synth --out corpus --train 1200 --val 100 --test 100 --faces 0
    OMP_NUM_THREADS=1 python examples/video_ctc.py corpus --encoder lipconv --stack 1 --steps 300
    OMP_NUM_THREADS=1 python examples/video_ctc.py corpus --speed

    # the lipconv front-ends compared in models/encoders/lipconv.py (options override lipconv-demo.json)
    python examples/video_ctc.py corpus --steps 1200 --batch 8 \
        --options '{"input_size": 44, "widths": [16, 32, 64], "prenorm": false}'
    python examples/video_ctc.py corpus --steps 1200 --batch 8 \
        --options '{"input_size": 22, "widths": [], "prenorm": true}' [--teacher 1.0]

``--align W`` adds frame cross-entropy (weight W, through a second linear head) on the token spans of
the transcripts force-aligned on the audio (``train.warmup_aligners``: a linear CTC head fitted on the
cached Whisper features, Viterbi alignment, frames split at the midpoints between token onsets); the
frame head's greedy token error is reported beside the CTC head's.

``--teacher W`` adds the distillation loss of ``train.warmup_teachers`` (weight W): a linear head on the
encoder's frames regresses Whisper tiny.en's features (pairs of 50 Hz frames averaged to 25 Hz, each
dimension standardised over the training split), cached in ``<corpus>/whisper_tiny_25hz.pt``.
Decoded frames (centre 88×88, uint8) and token ids are cached in ``<corpus>/video_ctc_<split>.pt``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llama_avsr.config import EncoderConfig
from llama_avsr.data.corpus import read_labels
from llama_avsr.data.transforms import VIDEO_MEAN, VIDEO_STD
from llama_avsr.evaluation.metrics import ErrorCounts, align_counts
from llama_avsr.media import read_video
from llama_avsr.models.encoders import build_encoder
from llama_avsr.models.llm import load_tokenizer
from llama_avsr.training.warmup import ctc_align, span_labels

ENCODERS = {
    "lipconv": EncoderConfig(kind="lipconv", arch="lipconv-demo", frozen=False),
    "avhubert": EncoderConfig(kind="avhubert", arch="avhubert-demo", frozen=False),
}


def load(corpus: Path, split: str) -> dict:
    cache = corpus / f"video_ctc_{split}.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    utts, problems = read_labels(corpus / "labels" / f"synth_{split}.csv", corpus)
    assert not problems, problems
    tok = load_tokenizer("smollm2-135m")
    data = {"video": [], "ids": [], "text": []}
    for u in utts:
        frames, _ = read_video(u.video, gray=True)
        h, w = frames.shape[1:]
        y, x = (h - 88) // 2, (w - 88) // 2
        data["video"].append(torch.from_numpy(np.ascontiguousarray(frames[:, y : y + 88, x : x + 88])))
        data["ids"].append(torch.tensor(tok(u.text, add_special_tokens=False)["input_ids"]))
        data["text"].append(u.text)
    torch.save(data, cache)
    return data


def whisper_targets(corpus: Path) -> dict[str, list[torch.Tensor]]:
    """Whisper tiny.en features per utterance of the train and val splits at 25 Hz (float16), cached."""
    cache = corpus / "whisper_tiny_25hz.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    from llama_avsr.media import read_audio

    whisper = build_encoder(
        EncoderConfig(kind="whisper", source="whisper-tiny.en", options={"pad_to_30s": False})
    ).eval()
    out: dict[str, list[torch.Tensor]] = {}
    for split in ("train", "val"):
        utts, _ = read_labels(corpus / "labels" / f"synth_{split}.csv", corpus)
        out[split] = []
        with torch.no_grad():
            for k in range(0, len(utts), 16):
                audio = [torch.from_numpy(read_audio(u.audio_source())) for u in utts[k : k + 16]]
                lens = torch.tensor([len(a) for a in audio])
                f, n = whisper({"audio": nn.utils.rnn.pad_sequence(audio, batch_first=True)}, {"audio": lens})
                for j in range(len(audio)):
                    g = f[j, : int(n[j]) // 2 * 2]
                    out[split].append(g.view(-1, 2, g.shape[-1]).mean(1).half())
    torch.save(out, cache)
    return out


def audio_alignments(corpus: Path, train: dict, index: torch.Tensor, n_cls: int) -> list[torch.Tensor]:
    """Frame labels of the training videos from the audio: a linear CTC head on Whisper's 25 Hz features
    (fitted here in seconds), Viterbi-aligned to the transcript's tokens."""
    feats = whisper_targets(corpus)
    tr = [f.float() for f in feats["train"]]
    every = torch.cat(tr)
    mu, sd = every.mean(0), every.std(0) + 1e-5
    head = nn.Linear(every.shape[1], n_cls + 1)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    ys = [index[v] for v in train["ids"]]
    g = torch.Generator().manual_seed(1)
    for _ in range(8):
        for k in torch.randperm(len(tr), generator=g).split(16):
            x = nn.utils.rnn.pad_sequence([(tr[i] - mu) / sd for i in k], batch_first=True)
            lp = head(x).log_softmax(-1).transpose(0, 1)
            loss = F.ctc_loss(
                lp,
                torch.cat([ys[i] for i in k]),
                torch.tensor([len(tr[i]) for i in k]),
                torch.tensor([len(ys[i]) for i in k]),
                zero_infinity=True,
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    labels, errs = [], ErrorCounts()
    with torch.no_grad():
        for i, f in enumerate(tr):
            lp = head((f - mu) / sd).log_softmax(-1)
            best = lp.argmax(-1).tolist()
            hyp = [b for j, b in enumerate(best) if b != 0 and (j == 0 or b != best[j - 1])]
            errs = errs + align_counts([str(int(v)) for v in ys[i]], [str(v) for v in hyp])
            n = len(train["video"][i])
            lab = span_labels(ctc_align(lp, ys[i].tolist()), ys[i].tolist(), len(f)).clamp(min=0)
            out = torch.zeros(n, dtype=torch.long)
            out[: min(n, len(lab))] = lab[:n]
            labels.append(out)
    labelled = float(torch.cat(labels).ne(0).float().mean())
    print(f"audio CTC head: training token error {errs.rate:.3f}; frames labelled {labelled:.2f}", flush=True)  # noqa: T201
    return labels


def batch(data: dict, idx: list[int], targets: str) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    vs = [data["video"][i] for i in idx]
    x = torch.zeros(len(idx), max(len(v) for v in vs), 1, 88, 88)
    for j, v in enumerate(vs):
        x[j, : len(v), 0] = (v.float() / 255 - VIDEO_MEAN) / VIDEO_STD
    if targets == "chars":
        ys = [torch.tensor([ord(c) for c in data["text"][i]]) for i in idx]
    else:
        ys = [data["ids"][i] for i in idx]
    return x, torch.tensor([len(v) for v in vs]), ys


def speed() -> None:
    x, lens = torch.randn(4, 75, 1, 88, 88), torch.tensor([75, 70, 66, 60])
    encs = {k: build_encoder(c) for k, c in ENCODERS.items()}
    times: dict[tuple[str, str], list[float]] = {}
    for rep in range(4):
        for k, enc in encs.items():
            for p in ("float32", "bf16 autocast"):
                ctx = (
                    torch.autocast("cpu", dtype=torch.bfloat16)
                    if p != "float32"
                    else contextlib.nullcontext()
                )
                t0 = time.perf_counter()
                with ctx:
                    f, _ = enc({"video": x}, {"video": lens})
                f.float().square().mean().backward()
                if rep:  # the first round warms up
                    times.setdefault((k, p), []).append(time.perf_counter() - t0)
    for (k, p), v in times.items():
        print(f"{k:9s} {p:14s} {np.mean(v):6.2f} s per forward+backward (batch 4 x 75 frames)")  # noqa: T201


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path, nargs="?")
    ap.add_argument("--encoder", choices=sorted(ENCODERS), default="lipconv")
    ap.add_argument("--stack", type=int, default=1, help="frames stacked before the CTC head (1 = 25 Hz)")
    ap.add_argument("--targets", choices=["tokens", "chars"], default="tokens")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--speed", action="store_true", help="only time the video path of both encoders")
    ap.add_argument("--options", default="{}", help="lipconv options as JSON (override lipconv-demo.json)")
    ap.add_argument("--teacher", type=float, default=0.0, help="weight of the Whisper-feature distillation")
    ap.add_argument(
        "--align",
        type=float,
        default=0.0,
        help="weight of frame cross-entropy on token spans aligned from the audio",
    )
    ap.add_argument("--every", type=int, default=150, help="validate every N steps")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.speed:
        speed()
        return
    train, val = load(args.corpus, "train"), load(args.corpus, "val")
    classes = torch.unique(
        torch.cat([y for d in (train, val) for y in batch(d, list(range(len(d["text"]))), args.targets)[2]])
    )
    index = torch.zeros(int(classes.max()) + 1, dtype=torch.long)
    index[classes] = torch.arange(1, len(classes) + 1)
    cfg = ENCODERS[args.encoder]
    if args.options != "{}":
        cfg = dataclasses.replace(cfg, options=json.loads(args.options))
    enc = build_encoder(cfg)
    head = nn.Linear(enc.output_dim * args.stack, len(classes) + 1)
    params = [*enc.parameters(), *head.parameters()]
    teacher = whisper_targets(args.corpus)["train"] if args.teacher else None
    if teacher is not None:
        every = torch.cat([t.float() for t in teacher])
        t_mean, t_std = every.mean(0), every.std(0) + 1e-5
        t_head = nn.Linear(enc.output_dim, every.shape[1])
        params += [*t_head.parameters()]
    aligned = audio_alignments(args.corpus, train, index, len(classes)) if args.align else None
    if aligned is not None:
        f_head = nn.Linear(enc.output_dim, len(classes) + 1)
        params += [*f_head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / args.steps)
    )

    def logits(
        x: torch.Tensor, lens: torch.Tensor, feats: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        f, n = enc({"video": x}, {"video": lens}) if feats is None else (feats, lens)
        if args.stack > 1:
            t = f.shape[1] // args.stack
            f, n = f[:, : t * args.stack].reshape(f.shape[0], t, -1), n // args.stack
        return head(f), n

    def error_rate(data: dict, n: int = 100, frame: bool = False) -> tuple[float, float]:
        enc.eval()
        total, blank = ErrorCounts(), []
        with torch.no_grad():
            for k in range(0, n, 16):
                x, lens, ys = batch(data, list(range(k, min(n, k + 16))), args.targets)
                if frame:
                    lg, m = f_head(enc({"video": x}, {"video": lens})[0]), lens
                else:
                    lg, m = logits(x, lens)
                for j, y in enumerate(ys):
                    best = lg[j, : m[j]].argmax(-1).tolist()
                    blank.append(np.mean([b == 0 for b in best]))
                    hyp = [b for i, b in enumerate(best) if b != 0 and (i == 0 or b != best[i - 1])]
                    total = total + align_counts([str(int(v)) for v in index[y]], [str(v) for v in hyp])
        enc.train()
        return total.rate, float(np.mean(blank))

    g = torch.Generator().manual_seed(0)
    order, pos, losses, t0 = [], 0, [], time.time()
    for step in range(1, args.steps + 1):
        if pos + args.batch > len(order):
            order, pos = torch.randperm(len(train["text"]), generator=g).tolist(), 0
        idx = order[pos : pos + args.batch]
        x, lens, ys = batch(train, idx, args.targets)
        pos += args.batch
        feats, n_frames = enc({"video": x}, {"video": lens})
        lg, n = logits(x, lens, feats)
        y = torch.cat([index[v] for v in ys])
        loss = F.ctc_loss(
            lg.float().log_softmax(-1).transpose(0, 1),
            y,
            n,
            torch.tensor([len(v) for v in ys]),
            zero_infinity=True,
        )
        if teacher is not None:  # frames the audio covers: standardised Whisper features as targets
            target = torch.zeros(*feats.shape[:2], len(t_mean))
            mask = torch.zeros(feats.shape[:2])
            for j, i in enumerate(idx):
                k = min(int(n_frames[j]), len(teacher[i]))
                target[j, :k], mask[j, :k] = (teacher[i][:k].float() - t_mean) / t_std, 1
            err = (t_head(feats) - target).square().mean(-1)
            loss = loss + args.teacher * (err * mask).sum() / mask.sum()
        if aligned is not None:  # frame cross-entropy on the audio-aligned token spans
            lab = torch.full(feats.shape[:2], -100, dtype=torch.long)
            for j, i in enumerate(idx):
                k = min(int(n_frames[j]), len(aligned[i]))
                lab[j, :k] = aligned[i][:k]
            loss = loss + args.align * F.cross_entropy(f_head(feats).flatten(0, 1), lab.flatten())
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step % args.every == 0:
            msg = f"step {step} loss (mean of 50; CTC + teacher when on) {np.mean(losses[-50:]):.3f}  {step / (time.time() - t0):.2f} steps/s"
            if step % args.every == 0 or step == args.steps:
                rate, blank = error_rate(val)
                msg += f" | validation greedy {args.targets[:-1]} error rate {rate:.3f}, blank frames {blank:.2f}"
                if aligned is not None:
                    msg += " | frame head {:.3f} (silent frames {:.2f})".format(*error_rate(val, frame=True))
            print(msg, flush=True)  # noqa: T201


if __name__ == "__main__":
    main()
