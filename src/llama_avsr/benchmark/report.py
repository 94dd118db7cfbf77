"""A readable plain-text table of a bench report (the JSON holds everything)."""

from __future__ import annotations

from typing import Any


def _g(flops: float | None) -> str:
    if flops is None:
        return "-"
    return f"{flops / 1e12:.2f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.0f} GFLOP/s"


def _t(stat: dict[str, Any] | None) -> str:
    """``min / median`` seconds."""
    if not stat:
        return "-"
    return f"{stat['min']:.3f}/{stat['median']:.3f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def format_report(r: dict[str, Any]) -> str:
    failed = {k: v["error"] for k, v in r.items() if isinstance(v, dict) and "error" in v}
    r = {k: v for k, v in r.items() if k not in failed}
    lines: list[str] = []
    env, model, st = r["environment"], r["model"], r["settings"]
    dev = env.get("gpu") or env["cpu"]
    lines.append(
        f"llama-avsr bench — {env['device']} ({dev}), {env['torch_threads']} torch threads, "
        f"load {env.get('loadavg_start')} → {env.get('loadavg_end')}"
    )
    v = env["versions"]
    lines.append(
        f"torch {v.get('torch')}, transformers {v.get('transformers')}, peft {v.get('peft')}, "
        f"lightning {v.get('lightning')}; python {env['python']}"
    )
    lines.append(
        f"model: {model.get('weights', 'from the config')}; {'+'.join(model['modalities'])}, "
        f"LLM {model['llm']} ({model['llm_dtype']}, "
        f"{model['attention']}), {model['trainable_parameters']:,} trainable / {model['parameters']:,}; "
        f"precision {st['precision']}; inputs: {st['inputs']}; times are min/median s over {st['repeats']} runs"
    )
    if "matmul" in r:
        m = r["matmul"]
        peaks = ", ".join(f"{k} {_g(x['flops_per_s'])}" for k, x in m.items() if isinstance(x, dict))
        lines += ["", f"matmul peak (n={m['float32']['n']}): {peaks}; LLM compute dtype {m['compute_dtype']}"]
    if r.get("encoder"):
        lines += ["", f"{'encoder':<26} {'length':>7} {'batch':>5} {'s/batch':>15} {'ms/audio-s':>11}"]
        for e in r["encoder"]:
            lines.append(
                f"{e['encoder'] + ' ' + e['mode']:<26} {e['seconds']:>6g}s {e['batch']:>5} "
                f"{_t(e['time_s']):>15} {e['ms_per_audio_second']:>11.2f}"
            )
    if r.get("train"):
        lines += [
            "",
            f"{'train':<6} {'batch':>5} {'step s':>15} {'samples/s':>9} {'encoder s':>10} {'LLM step s':>15} "
            f"{'tokens':>6} {'LLM tok/s':>9} {'LLM train':>14} {'MFU':>5} {'LLM fwd':>14} {'MFU':>5} {'peak RSS':>9}",
        ]
        for t in r["train"]:
            enc = sum(x["min"] for x in t["encoder_s"].values())
            mem = t["peak_memory"]
            peak = f"{mem['rss_mib'] / 1024:.1f} GiB"
            if "gpu_max_allocated_mib" in mem:
                peak += f" / GPU {mem['gpu_max_allocated_mib'] / 1024:.1f} GiB"
            lines.append(
                f"{t['seconds']:>5g}s {t['batch']:>5} {_t(t['step_s']):>15} {t['samples_per_s']:>9.2f} "
                f"{enc:>10.3f} {_t(t['llm_step_s']):>15} {t['tokens']:>6} {t['llm_tokens_per_s']:>9.0f} "
                f"{_g(t['llm_train_flops_per_s']):>14} {t['llm_train_mfu']:>5.0%} "
                f"{_g(t['llm_forward_flops_per_s']):>14} {t['llm_forward_mfu']:>5.0%} {peak:>9}"
            )
    lines += ["", "speed-ups, each against the paper-exact path in the same run:"]
    w = r.get("whisper")
    if w and "skipped" not in w:
        for name, x in w.items():
            if isinstance(x, dict) and "speedup" in x:
                c = x["feature_cosine"]
                lines.append(
                    f"  whisper true length ({name}, {w['seconds']:g} s, batch {w['batch']}): encoder "
                    f"{x['encoder_s']['padded-30s']['min']:.3f} → {x['encoder_s']['true-length']['min']:.3f} s "
                    f"= {_x(x['speedup'])}; feature cosine to padded: mean {c['mean']:.3f}, 5th pct {c['p5']:.3f}"
                )
        lines.append(
            f"    training step {w['train_step_s']['padded-30s']['min']:.3f} → "
            f"{w['train_step_s']['true-length']['min']:.3f} s = {_x(w['train_step_speedup'])}"
        )
    fc = r.get("feature_cache")
    if fc:
        for mode, x in fc.items():
            if isinstance(x, dict) and "first_epoch_s" in x:
                lines.append(
                    f"  feature cache, {mode} ({x['encoder_padding']}; {fc['utterances']} utt, batch "
                    f"{fc['batch']}): no cache {x['epoch_without_cache_s']:.1f} s, first epoch "
                    f"{x['first_epoch_s']:.1f} s, later {_t(x['later_epoch_s'])} s = "
                    f"{_x(x['speedup_later_vs_first'])}"
                    + (
                        f"; disk cache: first {x['disk_first_epoch_s']:.1f} s, new run {x['disk_later_epoch_s']:.1f} s"
                        if "disk_first_epoch_s" in x
                        else ""
                    )
                )
        if "speedup_later_vs_paper_exact_first" in fc:
            lines.append(
                f"    later cached epoch vs a paper-exact first epoch: {_x(fc['speedup_later_vs_paper_exact_first'])}"
            )
    d = r.get("decode")
    if d:
        o, b, p = d["one_at_a_time"], d["batched"], d["batched_prompt_per_beam"]
        lines.append(
            f"  decoding ({d['utterances']} utt, {d['audio_seconds']:.0f} s audio, {d['num_beams']} beams, "
            f"≤{d['max_new_tokens']} tokens, {d['compute_dtype']}): exact one at a time (prompt per beam) "
            f"{o['utterances_per_s']:.2f} utt/s (RTF {o['real_time_factor']:.2f}), fast batch {b['batch_size']} "
            f"{b['utterances_per_s']:.2f} utt/s (RTF {b['real_time_factor']:.2f}) = {_x(d['speedup'])}; "
            f"identical transcripts {d['identical_transcripts']}/{d['utterances']}"
            + (
                f" ({d['compute_dtype']}), {d['identical_transcripts_float32']}/{d['utterances']} with the LLM in float32"
                if d.get("identical_transcripts_float32") is not None
                else ""
            )
        )
        g = d.get("greedy")
        if g:
            lines.append(
                f"    greedy: exact one at a time {g['one_at_a_time']['utterances_per_s']:.2f} → fast "
                f"{g['batched']['utterances_per_s']:.2f} utt/s = {_x(g['speedup'])}; identical "
                f"{g['identical_transcripts']}/{d['utterances']}"
            )
        if "paper_exact" in d:
            lines.append(
                f"    vs the paper-exact loop (one at a time, Whisper on 30 s padding): "
                f"{d['paper_exact']['utterances_per_s']:.2f} → {b['utterances_per_s']:.2f} utt/s = "
                f"{_x(d['speedup_vs_paper_exact'])} (transcripts differ with the encoder input: not compared)"
            )
        if "paper_exact_float32" in d:
            lines.append(
                f"    vs the paper-exact loop in float32 (the published code's setting): "
                f"{d['paper_exact_float32']['utterances_per_s']:.2f} → {b['utterances_per_s']:.2f} utt/s "
                f"({d['compute_dtype']}) = {_x(d['speedup_vs_paper_exact_float32'])}"
            )
        rows = d.get("gemm_flops_per_s_by_rows", {})
        lines.append(
            f"    prompt once per utterance vs once per beam (HF), batched: {p['utterances_per_s']:.2f} → "
            f"{b['utterances_per_s']:.2f} utt/s = {_x(d['prefill_once_speedup'])}; GEMM at "
            + ", ".join(f"{k} rows {_g(v)}" for k, v in rows.items())
        )
    ls = r.get("length_scaling")
    if ls:
        for name, f in ls.items():
            lines.append(
                f"  cost vs length, {name.replace('_', ' ')} ({f['lengths'][0]:g}–{f['lengths'][-1]:g} s): "
                f"{f['slope']:.4f} s per audio second + {f['intercept']:.3f} s (R² {f['r2']:.3f}); "
                f"time ∝ length^{f['exponent']:.2f}"
            )
    a = r.get("attention")
    if a:
        parts = [
            f"{k} {x['train_step_s']['min']:.3f} s" if "train_step_s" in x else f"{k} skipped"
            for k, x in a.items()
            if isinstance(x, dict)
        ]
        lines.append(f"  LLM attention (training step): {', '.join(parts)}")
    p = r.get("precision")
    if p:
        if "speedup" in p:
            lines.append(
                f"  autocast {p['precision']} (LLM weights {p['llm_weights']}): "
                f"{p['no autocast']['train_step_s']['min']:.3f} → {p['autocast']['train_step_s']['min']:.3f} s "
                f"= {_x(p['speedup'])}"
            )
        else:
            lines.append(f"  autocast: {p.get('skipped', 'failed')}")
    c = r.get("compile")
    if c:
        if "speedup" in c:
            lines.append(
                f"  torch.compile (LLM decoder): {c['eager_step_s']['min']:.3f} → {c['compiled_step_s']['min']:.3f} s "
                f"= {_x(c['speedup'])} (first compiled step {c['first_compiled_step_s']:.1f} s)"
            )
        else:
            lines.append(f"  torch.compile: {c['skipped']}")
    dl = r.get("data")
    if dl:
        if "skipped" in dl:
            lines.append(f"  data loading: {dl['skipped']}")
        else:
            parts = [
                f"{k}: {x['batch_s'] * 1e3:.0f} ms/batch ({x['utterances_per_s']:.0f} utt/s)"
                for k, x in dl.items()
                if k.startswith("workers=")
            ]
            lines.append(
                f"  data loading ({dl['utterances']} utt from disk, train transforms): {'; '.join(parts)}; "
                f"collate {dl['collate_s']['min'] * 1e3:.1f} ms/batch"
            )
    rates = r.get("rates") or {}
    if rates.get("combinations"):
        lines += [
            "",
            f"task x rates (vs {rates['reference']}; {rates['utterances']} utterances, {rates['num_beams']} beams)",
            f"{'task':<5} {'rates':<26} {'tokens/s':>8} {'GFLOPs/utt':>10} {'decode s':>15} {'x':>6} "
            f"{'train step s':>15} {'x':>6}",
        ]
        for c in rates["combinations"]:
            rk = ",".join(f"{k}={v}" for k, v in c["rates"].items())
            lines.append(
                f"{c['task']:<5} {rk:<26} {c['llm_media_tokens_per_second']:>8.2f} "
                f"{c['llm_prefill_flops_per_utterance'] / 1e9:>10.3f} {_t(c['decode_time_s']):>15} "
                f"{_x(c['decode_speedup']):>6} {_t(c['train_step_time_s']):>15} {_x(c['train_step_speedup']):>6}"
            )
    if r.get("targets"):
        lines += ["", "targets:"]
        for name, t in r["targets"].items():
            extra = {k: v for k, v in t.items() if k not in ("target", "measured", "holds")}
            lines.append(
                f"  {name:<24} {t['target']:<52} measured "
                + (f"k={t['measured']:.2f}" if "r2" in t else f"{_x(t['measured']):>7}")
                + f"  {'HOLDS' if t['holds'] else 'NOT MET'}"
                + (f"  {extra}" if extra else "")
            )
    for name, err in failed.items():
        lines.append(f"section {name} FAILED: {err}")
    lines.append(f"\nbench took {r['bench_seconds']:.0f} s")
    return "\n".join(lines)
