"""The benchmark: each section measures one thing on synthetic inputs, each speed-up against the
paper-exact path in the same run. See ``docs/performance.md`` for what the figures mean."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llama_avsr.benchmark.config import SECTIONS, BenchConfig
from llama_avsr.benchmark.inputs import SAMPLE_RATE, Utterances
from llama_avsr.benchmark.measure import (
    environment,
    loadavg,
    matmul_peak,
    matmul_rows,
    peak_memory,
    stats,
    synchronize,
    timeit,
)
from llama_avsr.data.batch import PAD_LABEL, Batch
from llama_avsr.data.collate import Collator
from llama_avsr.decoding.search import generate
from llama_avsr.devices import resolve_device, resolve_precision
from llama_avsr.io import atomic_write_text
from llama_avsr.models.avsr import AVSRModel
from llama_avsr.models.feature_cache import FeatureCache
from llama_avsr.models.llm import base_causal_lm

log = logging.getLogger(__name__)

#: targets of the performance issue (CPU, ratios from one bench run)
TARGET_WHISPER = 5.0
TARGET_CACHE = 3.0
#: the fast decoding path against the exact one-at-a-time path, beam search (15 beams in the issue)
TARGET_DECODE = 10.0
#: the paper-exact training step (Whisper on 30 s padding, float32), faster at the same math
TARGET_PAPER_STEP = 2.0
#: the label of the paper-exact decoding loop timed in float32 when the model computes in bf16 / fp16
PAPER_EXACT_FLOAT32 = "one-at-a-time, float32, Whisper padded-30s (paper-exact)"
#: "cost linear in length": the fitted exponent of time ∝ length^k over the sweep stays at or below this
TARGET_LENGTH_EXPONENT = 1.1
#: Whisper's input window; padding beyond it is impossible
WHISPER_WINDOW_S = 30.0

FLOPS_NOTE = (
    "LLM FLOPs per step = 2·(P_body·T + P_head·N) forward, ×3 forward+backward (the usual 6·P·T), where "
    "P_body = parameters of the decoder layers (+LoRA), T = real (non-padding) tokens in the batch, "
    "P_head = output-layer parameters, N = transcript tokens (the only positions with logits); attention "
    "score FLOPs are left out. With the base LLM frozen the backward pass skips weight gradients, so the "
    "work actually done is nearer 4·P·T: the train figure overstates by up to 1.5×."
)


class Bench:
    """Holds the model, the inputs and the settings; one method per section."""

    def __init__(self, exp: Any, cfg: BenchConfig, model: AVSRModel | None = None) -> None:
        self.exp, self.cfg = exp, cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision or exp.train.precision, self.device.type)
        self.amp_dtype = (
            torch.bfloat16
            if "bf16-mixed" in self.precision
            else torch.float16
            if "16-mixed" in self.precision
            else None
        )
        torch.manual_seed(cfg.seed)
        self.model = (model or AVSRModel(exp.model)).to(self.device)
        self.mods = self.model.cfg.modalities
        self.inputs = Utterances(self.mods, cfg.speech, cfg.seed, cfg.words_per_second)
        self.collate = Collator(self.model.tokenizer, self.mods)
        self.collate_infer = Collator(self.model.tokenizer, self.mods, with_targets=False)
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-5)
        self._batches: dict[tuple[float, int], Batch] = {}
        self.peak: float | None = None

    # -- helpers ----------------------------------------------------------------------------------

    def autocast(self, enabled: bool = True) -> contextlib.AbstractContextManager:
        dtype = self.amp_dtype or torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled and self.amp_dtype is not None)

    def batch(self, seconds: float, n: int | None = None) -> Batch:
        n = n or self.cfg.batch_size
        key = (seconds, n)
        if key not in self._batches:
            self._batches[key] = self.collate(self.inputs.make(seconds, n)).to(self.device)
        return self._batches[key]

    def train_step(self, batch: Batch, amp: bool = True) -> None:
        self.model.train()
        with self.autocast(amp):
            out = self.model(batch)
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def time(self, fn: Callable[[], Any], repeats: int | None = None, warmup: int | None = None) -> dict:
        return timeit(
            fn,
            self.device,
            self.cfg.repeats if repeats is None else repeats,
            self.cfg.warmup if warmup is None else warmup,
        )

    @contextlib.contextmanager
    def float32_llm(self) -> Iterator[None]:
        """The LLM's floating-point parameters and buffers upcast to float32 (exact from bf16 / fp16),
        their own dtypes restored afterwards (LoRA adapters stay float32 throughout)."""
        tensors = [
            t for t in (*self.model.llm.parameters(), *self.model.llm.buffers()) if t.is_floating_point()
        ]
        saved = [t.dtype for t in tensors]
        for t in tensors:
            t.data = t.data.float()
        try:
            yield
        finally:
            for t, dtype in zip(tensors, saved, strict=True):
                t.data = t.data.to(dtype)

    def whisper_encoders(self) -> dict[str, Any]:
        from llama_avsr.models.encoders.whisper import WhisperEncoder

        return {n: e for n, e in self.used_encoders().items() if isinstance(e, WhisperEncoder)}

    def used_encoders(self) -> dict[str, Any]:
        names = dict.fromkeys(s.encoder for s in self.model.cfg.streams.values())
        return {n: self.model.encoders[n] for n in names}

    @contextlib.contextmanager
    def padding(self, pad: bool | None) -> Iterator[None]:
        """Switch every Whisper encoder to 30 s padding (True) or true length (False); None: as configured."""
        encs = self.whisper_encoders()
        saved = {n: e.options for n, e in encs.items()}
        if pad is not None:
            for e in encs.values():
                e.options = dataclasses.replace(e.options, pad_to_30s=pad)
        try:
            yield
        finally:
            for n, e in encs.items():
                e.options = saved[n]

    @contextlib.contextmanager
    def cache(self, cache: FeatureCache | None) -> Iterator[FeatureCache | None]:
        saved = self.model.feature_cache
        self.model.feature_cache = cache
        try:
            yield cache
        finally:
            self.model.feature_cache = saved

    def run_encoder(self, name: str, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        stream = next(s for s in self.model.cfg.streams.values() if s.encoder == name)
        enc = self.model.encoders[name]
        with torch.no_grad(), self.autocast():
            return enc(
                {m: batch.inputs[m] for m in stream.inputs}, {m: batch.lengths[m] for m in stream.inputs}
            )

    def configured_padding(self) -> bool | None:
        encs = self.whisper_encoders()
        return any(e.options.pad_to_30s for e in encs.values()) if encs else None

    def token_counts(self, batch: Batch) -> tuple[int, int]:
        """(real tokens of the LLM input, transcript tokens with logits) of a training batch."""
        with torch.no_grad(), self.autocast(), self.cache(FeatureCache()):
            seq = self.model.prepare(batch, with_targets=True)
        return int(seq.attention_mask.sum()), int((seq.labels[:, 1:] != PAD_LABEL).sum())

    def llm_flops(self, tokens: int, targets: int) -> float:
        """Forward FLOPs of the LLM (see :data:`FLOPS_NOTE`)."""
        base = base_causal_lm(self.model.llm)
        decoder = base.get_decoder()
        emb = decoder.get_input_embeddings().weight.numel()
        body = sum(p.numel() for p in decoder.parameters()) - emb
        head = base.get_output_embeddings().weight.numel()
        return 2.0 * (body * tokens + head * targets)

    def compute_dtype(self) -> torch.dtype:
        if self.amp_dtype is not None:
            return self.amp_dtype
        return base_causal_lm(self.model.llm).get_input_embeddings().weight.dtype

    # -- sections ---------------------------------------------------------------------------------

    def section_matmul(self) -> dict[str, Any]:
        n = self.cfg.matmul_size or (8192 if self.device.type == "cuda" else 2048)
        dtypes = [torch.float32, torch.bfloat16]
        out: dict[str, Any] = {}
        for dt in dtypes:
            r = matmul_peak(self.device, dt, n, max(2, self.cfg.repeats))
            out[r["dtype"]] = {"n": n, "flops_per_s": r["flops_per_s"], "time": r["time"]}
        compute = str(self.compute_dtype()).removeprefix("torch.")
        out["compute_dtype"] = compute
        self.peak = out.get(compute, out["float32"])["flops_per_s"]
        return out

    def section_encoder(self) -> list[dict[str, Any]]:
        rows = []
        whisper = self.whisper_encoders()
        lengths = sorted({*self.cfg.lengths, self.cfg.compare_seconds})
        for seconds in lengths:
            batch = self.batch(seconds)
            for name in self.used_encoders():
                modes: list[tuple[str, bool | None]] = [("configured", None)]
                if name in whisper:
                    modes = [("true-length", False)]
                    if seconds <= WHISPER_WINDOW_S:
                        modes.append(("padded-30s", True))
                for mode, pad in modes:
                    with self.padding(pad):
                        t = self.time(lambda name=name, batch=batch: self.run_encoder(name, batch))
                    b = len(batch)
                    rows.append(
                        {
                            "encoder": name,
                            "seconds": seconds,
                            "batch": b,
                            "mode": mode,
                            "time_s": t,
                            "ms_per_audio_second": 1e3 * t["min"] / (b * seconds),
                        }
                    )
                    log.info("encoder %s %s %.3gs: %.3f s/batch", name, mode, seconds, t["min"])
        return rows

    def section_train(self) -> list[dict[str, Any]]:
        if self.peak is None:
            self.section_matmul()
        rows = []
        for seconds in self.cfg.lengths:
            batch = self.batch(seconds)
            b = len(batch)
            with peak_memory(self.device) as mem:
                step = self.time(lambda batch=batch: self.train_step(batch))
            enc = {
                n: self.time(lambda n=n, batch=batch: self.run_encoder(n, batch))
                for n in self.used_encoders()
            }
            tokens, targets = self.token_counts(batch)
            # the LLM alone: encoder features served from a warm cache (projector + LLM + optimiser)
            with self.cache(FeatureCache()) as cache:
                llm = self.time(lambda batch=batch: self.train_step(batch), warmup=max(1, self.cfg.warmup))

                def forward(batch=batch):
                    with torch.no_grad(), self.autocast():
                        self.model(batch)

                fwd = self.time(forward)
                isolated = all(cache.applies(n, e) for n, e in self.used_encoders().items())
            flops = self.llm_flops(tokens, targets)
            row = {
                "seconds": seconds,
                "batch": b,
                "step_s": step,
                "samples_per_s": b / step["min"],
                "encoder_s": {n: t for n, t in enc.items()},
                "llm_step_s": llm,
                "llm_isolated": isolated,
                "llm_forward_s": fwd,
                "tokens": tokens,
                "transcript_tokens": targets,
                "llm_tokens_per_s": tokens / llm["min"],
                "llm_train_flops_per_s": 3 * flops / llm["min"],
                "llm_forward_flops_per_s": flops / fwd["min"],
                "llm_train_mfu": 3 * flops / llm["min"] / self.peak,
                "llm_forward_mfu": flops / fwd["min"] / self.peak,
                "peak_memory": mem.result,
            }
            rows.append(row)
            log.info("train %.3gs: step %.3f s, %.1f samples/s", seconds, step["min"], row["samples_per_s"])
        return rows

    def section_whisper(self) -> dict[str, Any]:
        """Speed-up 1: Whisper on the true length vs 30 s padding (encoder, training step, features)."""
        encs = self.whisper_encoders()
        if not encs:
            return {"skipped": "no Whisper encoder in this model"}
        s = self.cfg.compare_seconds
        batch = self.batch(s)
        out: dict[str, Any] = {"seconds": s, "batch": len(batch)}
        for name in encs:
            t = {}
            for mode, pad in (("padded-30s", True), ("true-length", False)):
                with self.padding(pad):
                    t[mode] = self.time(lambda name=name: self.run_encoder(name, batch))
            sim = self.feature_similarity(name)
            out[name] = {
                "encoder_s": t,
                "speedup": t["padded-30s"]["min"] / t["true-length"]["min"],
                "feature_cosine": sim,
            }
        steps = {}
        for mode, pad in (("padded-30s", True), ("true-length", False)):
            with self.padding(pad):
                steps[mode] = self.time(lambda: self.train_step(batch))
        out["train_step_s"] = steps
        out["train_step_speedup"] = steps["padded-30s"]["min"] / steps["true-length"]["min"]
        return out

    def feature_similarity(self, name: str) -> dict[str, Any]:
        """Cosine similarity of true-length to 30 s-padded features, per valid frame."""
        batch = self.batch(self.cfg.compare_seconds, min(8, self.cfg.batch_size))
        feats = {}
        for pad in (True, False):
            with self.padding(pad):
                feats[pad] = self.run_encoder(name, batch)
        (fp, lp), (ft, lt) = feats[True], feats[False]
        cos = []
        for i in range(len(batch)):
            n = int(min(lp[i], lt[i]))
            cos.append(F.cosine_similarity(fp[i, :n].float(), ft[i, :n].float(), dim=-1))
        c = torch.cat(cos)
        return {
            "mean": float(c.mean()),
            "p5": float(c.quantile(0.05)),
            "min": float(c.min()),
            "frames": int(c.numel()),
            "inputs": "espeak-ng speech" if self.inputs.speech else "noise",
        }

    def section_feature_cache(self) -> dict[str, Any]:
        """Speed-up 2: epochs with the frozen-encoder cache (first epoch fills it, later ones reuse it)."""
        cfg = self.cfg
        samples = self.inputs.make(cfg.compare_seconds, cfg.epoch_utterances, jitter=0.2)
        samples.sort(key=lambda x: x[self.mods[0]].shape[0])  # as the length-bucketing sampler
        batches = [
            self.collate(samples[i : i + cfg.batch_size]).to(self.device)
            for i in range(0, len(samples), cfg.batch_size)
        ]

        def epoch() -> None:
            for b in batches:
                self.train_step(b)

        def once() -> float:
            synchronize(self.device)
            start = time.perf_counter()
            epoch()
            synchronize(self.device)
            return time.perf_counter() - start

        out: dict[str, Any] = {"utterances": len(samples), "batches": len(batches), "batch": cfg.batch_size}
        configured = self.configured_padding()
        modes: list[tuple[str, bool | None]] = [("configured", None)]
        if configured is False:
            modes.append(("paper-exact (padded-30s)", True))
        self.train_step(batches[0])  # warm-up
        for mode, pad in modes:
            with self.padding(pad):
                no_cache = once()
                with self.cache(FeatureCache()) as cache:
                    first = once()
                    later = stats([once() for _ in range(cfg.repeats)])
                    applies = sorted(n for n, e in self.used_encoders().items() if cache.applies(n, e))
                r: dict[str, Any] = {
                    "encoder_padding": "30s" if (pad if pad is not None else configured) else "true-length",
                    "cached_encoders": applies,
                    "epoch_without_cache_s": no_cache,
                    "first_epoch_s": first,
                    "later_epoch_s": later,
                    "speedup_later_vs_first": first / later["min"],
                    "speedup_later_vs_no_cache": no_cache / later["min"],
                }
                if mode == "configured":
                    with tempfile.TemporaryDirectory() as tmp:
                        with self.cache(FeatureCache(tmp)):
                            r["disk_first_epoch_s"] = once()
                        with self.cache(FeatureCache(tmp)):  # a new run reading the cache folder
                            r["disk_later_epoch_s"] = once()
                        r["disk_bytes"] = sum(p.stat().st_size for p in Path(tmp).rglob("*.safetensors"))
                out[mode] = r
            log.info("feature cache (%s): first epoch %.1f s, later %.1f s", mode, first, later["min"])
        if "paper-exact (padded-30s)" in out:
            out["speedup_later_vs_paper_exact_first"] = (
                out["paper-exact (padded-30s)"]["first_epoch_s"] / out["configured"]["later_epoch_s"]["min"]
            )
        return out

    def section_decode(self) -> dict[str, Any]:
        """Speed-up 3: the fast decoding path (length-sorted batches, the prompt run once per utterance)
        against the exact one-at-a-time path (one utterance, Hugging Face's beam search with the prompt
        run once per beam, as the published code), same beams, same encoder input; the same for greedy
        search; and against the paper-exact path (that loop with Whisper on 30 s padding)."""
        cfg, dec = self.cfg, self.exp.decode
        bs = cfg.decode_batch_size or dec.batch_size
        samples = self.inputs.make(cfg.compare_seconds, cfg.decode_utterances, jitter=0.2)
        key = self.mods[0]
        samples.sort(key=lambda x: x[key].shape[0])  # as the evaluation's length buckets
        audio_s = sum(x[key].shape[0] for x in samples) / (SAMPLE_RATE if key == "audio" else 25)
        self.model.eval()

        def decode(batch_size: int, options, amp: bool = True) -> list[str]:
            hyps: list[str] = []
            with self.autocast(amp):
                for i in range(0, len(samples), batch_size):
                    batch = self.collate_infer(samples[i : i + batch_size]).to(self.device)
                    hyps += generate(self.model, batch, options)
            return hyps

        fast = dataclasses.replace(dec, prefill_once=True)
        exact = dataclasses.replace(dec, prefill_once=False)
        results: dict[str, list[str]] = {}

        def run(
            label: str, batch_size: int, options, pad: bool | None = None, amp: bool = True
        ) -> dict[str, Any]:
            def fn() -> None:
                results[label] = decode(batch_size, options, amp)

            with self.padding(pad), peak_memory(self.device) as mem:
                t = self.time(fn, repeats=cfg.decode_repeats, warmup=0)
            log.info("decode %s: %.1f s for %d utterances", label, t["min"], len(samples))
            return {
                "batch_size": batch_size,
                "num_beams": options.num_beams,
                "prefill_once": options.prefill_once,
                "time_s": t,
                "utterances_per_s": len(samples) / t["min"],
                "real_time_factor": t["min"] / audio_s,
                "peak_memory": mem.result,
            }

        with self.autocast():  # warm-up
            generate(
                self.model,
                self.collate_infer(samples[:1]).to(self.device),
                dataclasses.replace(fast, max_new_tokens=2),
            )
        one = run("one-at-a-time (exact)", 1, exact)
        batched = run("batched (fast)", bs, fast)
        per_beam = run("batched, prompt per beam (HF)", bs, exact)
        greedy = dataclasses.replace(fast, num_beams=1)
        greedy_one = run("greedy one-at-a-time (exact)", 1, greedy)
        greedy_batched = run("greedy batched (fast)", bs, greedy)
        paper = None
        if cfg.decode_paper_exact and self.configured_padding() is False:
            paper = run("one-at-a-time, Whisper padded-30s (paper-exact)", 1, exact, pad=True)

        def same(a: str, b: str) -> int:
            return sum(x == y for x, y in zip(results[a], results[b], strict=True))

        # In bf16 a padded batch rounds differently from a lone utterance (other GEMM shapes, masked
        # attention kernels), which flips near-tied beams, most of all for an untrained model. The same
        # weights upcast to float32 (exact) show whether the fast path itself changes any transcript.
        # The float32 run also times the paper-exact loop in float32 (one utterance at a time, Whisper on
        # 30 s padding, no autocast): the published code's setting, against which the fast path in the
        # configured dtype is measured (speedup_vs_paper_exact_float32).
        same32, paper32 = None, None
        if cfg.decode_float32_check and self.compute_dtype() != torch.float32:
            with self.float32_llm():
                one32, batched32 = decode(1, exact, amp=False), decode(bs, fast, amp=False)
                if cfg.decode_paper_exact and self.configured_padding() is False:
                    paper32 = run(PAPER_EXACT_FLOAT32, 1, exact, pad=True, amp=False)
            same32 = sum(a == b for a, b in zip(one32, batched32, strict=True))
            log.info("decode float32 check: %d/%d identical transcripts", same32, len(samples))
        # why batching helps less on a CPU: GEMM efficiency at the row counts of each mode
        hidden = base_causal_lm(self.model.llm).config.hidden_size
        inter = getattr(base_causal_lm(self.model.llm).config, "intermediate_size", 4 * hidden)
        rows = matmul_rows(
            self.device, self.compute_dtype(), [dec.num_beams, dec.num_beams * bs], hidden, inter, 3
        )
        out = {
            "utterances": len(samples),
            "audio_seconds": audio_s,
            "num_beams": dec.num_beams,
            "max_new_tokens": dec.max_new_tokens,
            "one_at_a_time": one,
            "batched": batched,
            "batched_prompt_per_beam": per_beam,
            "speedup": batched["utterances_per_s"] / one["utterances_per_s"],
            "prefill_once_speedup": batched["utterances_per_s"] / per_beam["utterances_per_s"],
            "identical_transcripts": same("one-at-a-time (exact)", "batched (fast)"),
            "identical_prefill_once_vs_per_beam": same("batched (fast)", "batched, prompt per beam (HF)"),
            "identical_transcripts_float32": same32,
            "greedy": {
                "one_at_a_time": greedy_one,
                "batched": greedy_batched,
                "speedup": greedy_batched["utterances_per_s"] / greedy_one["utterances_per_s"],
                "identical_transcripts": same("greedy one-at-a-time (exact)", "greedy batched (fast)"),
            },
            "compute_dtype": str(self.compute_dtype()).removeprefix("torch."),
            "mean_words": sum(len(h.split()) for h in results["batched (fast)"]) / len(samples),
            "mean_new_tokens_note": "an untrained model rarely emits EOS: every beam then runs max_new_tokens",
            "gemm_flops_per_s_by_rows": {str(k): v for k, v in rows.items()},
            "examples": {k: v[:2] for k, v in results.items()},
        }
        if paper is not None:
            out["paper_exact"] = paper
            out["speedup_vs_paper_exact"] = batched["utterances_per_s"] / paper["utterances_per_s"]
        if paper32 is not None:
            out["paper_exact_float32"] = paper32
            out["speedup_vs_paper_exact_float32"] = batched["utterances_per_s"] / paper32["utterances_per_s"]
        return out

    def section_rates(self) -> dict[str, Any]:
        """The cost side of every task × compression rate of a multi-task / multi-rate model, in one run:
        LLM media tokens per second of media, input tokens and forward FLOPs per utterance, the training
        step and batched decoding time (same utterances, same beams), each relative to the model's
        fullest task at its least compressed rates."""
        cfg, model = self.model.cfg, self.model
        if not (cfg.multi_task or cfg.multi_rate):
            return {"skipped": "the model has one task and one compression rate per stream"}
        dec = dataclasses.replace(self.exp.decode, prefill_once=True)
        samples = self.inputs.make(self.cfg.compare_seconds, self.cfg.decode_utterances, jitter=0.2)
        key = self.mods[0]
        media_s = sum(x[key].shape[0] for x in samples) / (SAMPLE_RATE if key == "audio" else 25)
        batch = self.collate(samples).to(self.device)
        train_batch = self.batch(self.cfg.compare_seconds)
        rows: list[dict[str, Any]] = []
        for task in cfg.task_names:
            for rates in cfg.rate_combinations(task):
                model.eval()
                with torch.no_grad(), self.autocast():
                    seq = model.prepare(batch, with_targets=False, task=task, rates=rates)
                media = int((seq.stream_index >= 0).sum())
                tokens = int(seq.attention_mask.sum())

                def decode_all(task=task, rates=rates) -> None:
                    model.eval()
                    with self.autocast():
                        for i in range(0, len(samples), dec.batch_size):
                            b = self.collate_infer(samples[i : i + dec.batch_size]).to(self.device)
                            generate(model, b, dec, task, rates)

                def step(task=task, rates=rates) -> None:
                    model.train()
                    with self.autocast():
                        out = model(train_batch, task=task, rates=rates)
                    out.loss.backward()
                    self.opt.zero_grad(set_to_none=True)

                t_dec = self.time(decode_all, repeats=self.cfg.decode_repeats, warmup=0)
                t_step = self.time(step)
                rows.append(
                    {
                        "task": task,
                        "rates": rates,
                        "llm_media_tokens_per_second": media / media_s,
                        "llm_input_tokens_per_utterance": tokens / len(samples),
                        "llm_prefill_flops_per_utterance": self.llm_flops(tokens, 0) / len(samples),
                        "decode_time_s": t_dec,
                        "decode_utterances_per_s": len(samples) / t_dec["min"],
                        "train_step_time_s": t_step,
                    }
                )
                log.info("rates %s %s: %.1f media tokens/s", task, rates, media / media_s)
        ref = max(
            (r for r in rows if r["task"] == cfg.default_task),
            key=lambda r: r["llm_media_tokens_per_second"],
        )
        for r in rows:
            r["decode_speedup"] = r["decode_utterances_per_s"] / ref["decode_utterances_per_s"]
            r["train_step_speedup"] = ref["train_step_time_s"]["min"] / r["train_step_time_s"]["min"]
        return {
            "utterances": len(samples),
            "media_seconds": media_s,
            "num_beams": dec.num_beams,
            "reference": f"{ref['task']} {ref['rates']}",
            "combinations": rows,
        }

    def section_attention(self) -> dict[str, Any]:
        """Speed-up 4a: LLM attention implementations, training step and forward."""
        base = base_causal_lm(self.model.llm)
        saved = base.config._attn_implementation
        batch = self.batch(self.cfg.compare_seconds)
        out: dict[str, Any] = {"configured": saved}
        for impl in self.cfg.attention:
            if impl == "flash_attention_2" and not _flash_attn_usable(self.device):
                out[impl] = {"skipped": "needs a CUDA device and the flash-attn package"}
                continue
            try:
                base.set_attn_implementation(impl)
                out[impl] = {"train_step_s": self.time(lambda: self.train_step(batch))}
            except (ValueError, ImportError, RuntimeError) as e:
                out[impl] = {"skipped": f"{type(e).__name__}: {e}"}
            finally:
                base.set_attn_implementation(saved)
        return out

    def section_precision(self) -> dict[str, Any]:
        """Speed-up 4b: autocast (bf16 mixed precision) on vs off, same weights."""
        batch = self.batch(self.cfg.compare_seconds)
        weights = str(base_causal_lm(self.model.llm).get_input_embeddings().weight.dtype).removeprefix(
            "torch."
        )
        out: dict[str, Any] = {"llm_weights": weights, "precision": self.precision}
        if self.amp_dtype is None:
            out["skipped"] = f"precision {self.precision} uses no autocast"
            return out
        for label, amp in (("autocast", True), ("no autocast", False)):
            try:
                out[label] = {"train_step_s": self.time(lambda amp=amp: self.train_step(batch, amp))}
            except RuntimeError as e:
                out[label] = {"skipped": f"{type(e).__name__}: {e}"}
        if "train_step_s" in out["autocast"] and "train_step_s" in out["no autocast"]:
            out["speedup"] = (
                out["no autocast"]["train_step_s"]["min"] / out["autocast"]["train_step_s"]["min"]
            )
        return out

    def section_compile(self) -> dict[str, Any]:
        """Speed-up 4c: ``torch.compile`` of the LLM decoder (dynamic shapes)."""
        if not self.cfg.compile:
            return {"skipped": "bench.compile is false"}
        batch = self.batch(self.cfg.compare_seconds)
        decoder = base_causal_lm(self.model.llm).get_decoder()
        eager = self.time(lambda: self.train_step(batch))
        try:
            decoder.compile(dynamic=True)
            start = time.perf_counter()
            self.train_step(batch)
            synchronize(self.device)
            first = time.perf_counter() - start
            compiled = self.time(lambda: self.train_step(batch))
        except Exception as e:  # backend missing (no C compiler), unsupported op …
            return {"skipped": f"{type(e).__name__}: {e}"}
        finally:
            decoder._compiled_call_impl = None
        return {
            "eager_step_s": eager,
            "first_compiled_step_s": first,
            "compiled_step_s": compiled,
            "speedup": eager["min"] / compiled["min"],
        }

    def section_data(self) -> dict[str, Any]:
        """Speed-up 5: the DataLoader (decoding + transforms in workers) against the training step."""
        try:
            from llama_avsr import media  # PyAV
        except ImportError as e:
            return {"skipped": f"media I/O unavailable ({e})"}
        from llama_avsr.data.corpus import read_labels
        from llama_avsr.data.dataset import build_dataloader

        cfg = self.cfg
        samples = self.inputs.make(cfg.compare_seconds, cfg.epoch_utterances, jitter=0.2)
        out: dict[str, Any] = {"utterances": len(samples), "pin_memory": torch.cuda.is_available()}
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            rows = []
            for i, s in enumerate(samples):
                rel = f"bench/{i:04d}.mp4"
                path = root / "d" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                audio = s["audio"].numpy() if "audio" in s else None
                frames = int(
                    round((len(audio) / SAMPLE_RATE if audio is not None else len(s["video"]) / 25) * 25)
                )
                if audio is not None:
                    media.write_wav(
                        path.with_suffix(".wav"), 0.3 * audio / max(1e-6, float(abs(audio).max()))
                    )
                if "video" in self.mods:
                    gray = torch.randint(0, 256, (frames, 96, 96), dtype=torch.uint8).numpy()
                    media.write_video(path, gray)
                rows.append(f"d,{rel},{max(1, frames)},0,{s['text']}")
            atomic_write_text(root / "labels.csv", "\n".join(rows) + "\n")
            utts, _ = read_labels(root / "labels.csv", root)
            data = dataclasses.replace(self.exp.data, root=str(root), train_csv=str(root / "labels.csv"))
            # one collate call: the transcript tokenisation each batch pays (the prompt ids are computed
            # once, in the model)
            chunk = samples[: cfg.batch_size]
            out["collate_s"] = timeit(lambda: self.collate(chunk), torch.device("cpu"), cfg.repeats)
            for workers in cfg.data_workers:
                d = dataclasses.replace(data, num_workers=workers)
                loader = build_dataloader(utts, d, self.collate, "train", modalities=self.mods)

                def epoch(loader=loader) -> int:
                    n = 0
                    for b in loader:
                        b.to(self.device, non_blocking=True)
                        n += 1
                    return n

                n_batches = epoch()  # warm-up: starts the (persistent) workers
                t = timeit(epoch, torch.device("cpu"), 1, warmup=0)
                out[f"workers={workers}"] = {
                    "batches": n_batches,
                    "epoch_s": t,
                    "batch_s": t["min"] / max(1, n_batches),
                    "utterances_per_s": len(utts) / t["min"],
                }
                del loader
        return out


def _flash_attn_usable(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, from the sections that ran."""
    out: dict[str, Any] = {}
    w = result.get("whisper", {})
    ratios = [v["speedup"] for v in w.values() if isinstance(v, dict) and "speedup" in v]
    if ratios:
        out["whisper_true_length_vs_padded"] = {
            "target": f">= {TARGET_WHISPER:g}x at {w['seconds']:g} s",
            "measured": min(ratios),
            "holds": min(ratios) >= TARGET_WHISPER,
        }
    fc = result.get("feature_cache", {})
    if "configured" in fc:
        r = fc["configured"]["speedup_later_vs_first"]
        t: dict[str, Any] = {
            "target": f">= {TARGET_CACHE:g}x (epoch after the first vs the first)",
            "measured": r,
            "holds": r >= TARGET_CACHE,
            "encoder_padding": fc["configured"]["encoder_padding"],
        }
        if "paper-exact (padded-30s)" in fc:
            t["measured_paper_exact_padding"] = fc["paper-exact (padded-30s)"]["speedup_later_vs_first"]
            t["later_epoch_vs_paper_exact_first_epoch"] = fc["speedup_later_vs_paper_exact_first"]
        out["feature_cache_epochs"] = t
    dec = result.get("decode", {})
    if "speedup" in dec:
        n, same32 = dec["utterances"], dec.get("identical_transcripts_float32")
        t = {
            "target": f">= {TARGET_DECODE:g}x utterances/s, fast path (batch {dec['batched']['batch_size']}) vs "
            f"exact one at a time, {dec['num_beams']} beams, identical transcripts",
            "measured": dec["speedup"],
            "identical_transcripts": f"{dec['identical_transcripts']}/{n} ({dec['compute_dtype']})",
        }
        # identity is judged where the arithmetic is exact enough to judge batching: float32
        same = dec["identical_transcripts"] == n if same32 is None else same32 == n
        if same32 is not None:
            t["identical_transcripts_float32"] = f"{same32}/{n}"
        if "speedup_vs_paper_exact" in dec:
            t["vs_paper_exact_padded_whisper"] = dec["speedup_vs_paper_exact"]
        t["holds"] = dec["speedup"] >= TARGET_DECODE and same
        out["beam_decoding"] = t
        if "speedup_vs_paper_exact_float32" in dec:
            r = dec["speedup_vs_paper_exact_float32"]
            out["beam_decoding_vs_paper_exact_float32"] = {
                "target": f">= {TARGET_DECODE:g}x utterances/s, fast path in {dec['compute_dtype']} (batch "
                f"{dec['batched']['batch_size']}) vs the paper-exact loop in float32 (one at a time, Whisper "
                f"on 30 s padding), {dec['num_beams']} beams, identical float32 transcripts",
                "measured": r,
                "identical_transcripts_float32": f"{same32}/{n}",
                "holds": r >= TARGET_DECODE and same32 == n,
            }
        g = dec["greedy"]
        out["greedy_decoding"] = {
            "target": f">= {TARGET_DECODE:g}x utterances/s, greedy, fast path vs exact one at a time, "
            "identical transcripts",
            "measured": g["speedup"],
            "identical_transcripts": f"{g['identical_transcripts']}/{n} ({dec['compute_dtype']})",
            "holds": g["speedup"] >= TARGET_DECODE and g["identical_transcripts"] == n,
        }
    step = paper_exact_step(result)
    if step:
        out["paper_exact_train_step"] = {
            "target": f">= {TARGET_PAPER_STEP:g}x, Whisper on 30 s padding, same math "
            "(epochs after the first, frozen-encoder feature cache)",
            "measured": step["speedup"],
            "step_s": f"{step['before_s']:.3g} → {step['after_s']:.3g}",
            "holds": step["speedup"] >= TARGET_PAPER_STEP,
        }
    fit = result.get("length_scaling", {}).get("train_step")
    if fit:
        out["cost_linear_in_length"] = {
            "target": f"training step time ∝ length^k with k <= {TARGET_LENGTH_EXPONENT:g} "
            f"({fit['lengths'][0]:g}–{fit['lengths'][-1]:g} s)",
            "measured": fit["exponent"],
            "slope_s_per_audio_s": fit["slope"],
            "r2": fit["r2"],
            "holds": fit["exponent"] <= TARGET_LENGTH_EXPONENT,
        }
    return out


def paper_exact_step(result: dict[str, Any]) -> dict[str, float] | None:
    """The paper-exact training step (Whisper on 30 s padding) without and with the frozen-encoder
    feature cache, per batch, from the feature-cache section's epochs (the math is the same: a frozen
    encoder in eval mode is a pure function of its input, and the cache serves its output)."""
    fc = result.get("feature_cache", {})
    mode = next((m for m, x in fc.items() if isinstance(x, dict) and x.get("encoder_padding") == "30s"), None)
    if mode is None:
        return None
    x, batches = fc[mode], fc["batches"]
    before, after = x["epoch_without_cache_s"] / batches, x["later_epoch_s"]["min"] / batches
    return {"mode": mode, "before_s": before, "after_s": after, "speedup": before / after}


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, Any]:
    """Least squares ``y = intercept + slope·x`` (R²) and the exponent ``k`` of ``y ∝ x^k`` (a log-log
    fit): k ≈ 1 is linear cost, k < 1 a fixed cost on top, k > 1 super-linear (e.g. attention)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-12)) for y in ys]
    mlx, mly = sum(lx) / n, sum(ly) / n
    slx = sum((v - mlx) ** 2 for v in lx)
    k = sum((a - mlx) * (b - mly) for a, b in zip(lx, ly, strict=True)) / slx if slx else 1.0
    return {
        "lengths": list(xs),
        "times_s": list(ys),
        "slope": slope,
        "intercept": intercept,
        "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0,
        "exponent": k,
    }


def length_scaling(result: dict[str, Any]) -> dict[str, Any]:
    """Cost against utterance length over the sweep: the training step (as configured) and each encoder
    on the configured input (Whisper true length)."""
    out: dict[str, Any] = {}
    rows = [r for r in result.get("train", []) if isinstance(r, dict) and "step_s" in r]
    if len(rows) >= 2:
        out["train_step"] = linear_fit([r["seconds"] for r in rows], [r["step_s"]["min"] for r in rows])
    enc = [r for r in result.get("encoder", []) if isinstance(r, dict) and r["mode"] != "padded-30s"]
    for name in dict.fromkeys(r["encoder"] for r in enc):
        mine = [r for r in enc if r["encoder"] == name]
        if len(mine) >= 2:
            out[f"encoder {name}"] = linear_fit(
                [r["seconds"] for r in mine], [r["time_s"]["min"] for r in mine]
            )
    return out


def run_bench(
    exp: Any, cfg: BenchConfig, model: AVSRModel | None = None, weights: str | None = None
) -> dict[str, Any]:
    """Run the configured sections; returns the JSON-serialisable report.

    model: bench this model (e.g. loaded from a model directory; ``exp.model`` must be its config)
        instead of building ``exp.model``; weights: where its weights come from, for the report.
    """
    start = time.time()
    bench = Bench(exp, cfg, model)
    total, trainable = bench.model.parameter_counts()
    result: dict[str, Any] = {
        "environment": environment(bench.device),
        "settings": {
            **dataclasses.asdict(cfg),
            "precision": bench.precision,
            "inputs": "espeak-ng speech" if bench.inputs.speech else "noise",
            "decode": dataclasses.asdict(exp.decode),
        },
        "model": {
            "weights": weights
            or (
                "given"
                if model is not None
                else "built from the config (pretrained where a source is named, the rest random)"
            ),
            "modalities": bench.mods,
            "encoders": {n: dataclasses.asdict(c) for n, c in exp.model.encoders.items()},
            "llm": exp.model.llm.source or exp.model.llm.arch,
            "llm_dtype": exp.model.llm.dtype,
            "attention": exp.model.llm.attn_implementation,
            "parameters": total,
            "trainable_parameters": trainable,
        },
        "flops_formula": FLOPS_NOTE,
    }
    for section in SECTIONS:
        if cfg.runs(section):
            log.info("bench: %s", section)
            t0 = time.time()
            try:
                result[section] = getattr(bench, f"section_{section}")()
            except Exception as e:  # one failing section (a backend, a library version) keeps the others
                log.exception("bench: section %s failed", section)
                result[section] = {"error": f"{type(e).__name__}: {e}"}
            result.setdefault("section_seconds", {})[section] = round(time.time() - t0, 1)
            log.info("bench: %s done in %.0f s", section, time.time() - t0)
    scaling = length_scaling(result)
    if scaling:
        result["length_scaling"] = scaling
    result["targets"] = _targets(result)
    result["environment"]["loadavg_end"] = loadavg()
    result["bench_seconds"] = round(time.time() - start, 1)
    return _clean(result)


def _clean(x: Any) -> Any:
    """Round floats for a readable JSON; NaN/inf → None."""
    if isinstance(x, float):
        return None if not math.isfinite(x) else float(f"{x:.5g}")
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x
