"""``llama-avsr params``: count total and trainable parameters of a configuration without weights."""

from __future__ import annotations

import argparse
import logging

HELP = "count total and trainable parameters of a config (built on the meta device: no weights needed)"
DESCRIPTION = (
    HELP + ". Every part is built from the architecture configs kept in the repo (configs/arch), so "
    "paper-size models (Llama-3.1-8B, Whisper-medium, AV-HuBERT Large) are counted instantly. The last "
    "line, `trainable: N`, gives the exact integer."
)
EXAMPLES = """\
llama-avsr params --config paper/avsr
llama-avsr params --config paper/asr model.llm.lora.reduction=32 model.streams.audio.compression.ratio=4
llama-avsr params --config paper/omni          # one model, 3 tasks x 4 rates: every LoRA strategy counted
"""

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        required=True,
        help="recipe name (paper/asr, …) or experiment YAML (its `model:` section is used)",
    )
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.llm.lora.reduction=32")


def _fmt(n: int) -> str:
    return f"{n / 1e6:,.2f} M"


def run(args: argparse.Namespace) -> int:
    from llama_avsr.config import ConfigError, ModelConfig, from_dict, load_recipe
    from llama_avsr.models.avsr import AVSRModel

    data = load_recipe(args.config, args.overrides)
    if not isinstance(data.get("model"), dict):
        raise ConfigError(f"{args.config}: a config needs a `model:` section")
    try:
        cfg = from_dict(ModelConfig, data["model"], "model")
    except (ValueError, TypeError) as e:
        raise ConfigError(" ".join(str(e).split())) from e
    model = AVSRModel(cfg, meta=True)
    rows = []
    for group, mod in (("encoders", model.encoders), ("projectors", model.projectors), ("llm", model.llm)):
        for name, sub in mod.named_children() if group != "llm" else [("llm", mod)]:
            total = sum(p.numel() for p in sub.parameters())
            train = sum(p.numel() for p in sub.parameters() if p.requires_grad)
            rows.append((f"{group}.{name}" if group != "llm" else "llm", total, train))
    width = max(len(r[0]) for r in rows)
    print(f"{'component':<{width}}  {'total':>14}  {'trainable':>12}")  # noqa: T201
    for name, total, train in rows:
        print(f"{name:<{width}}  {_fmt(total):>14}  {_fmt(train):>12}")  # noqa: T201
    total, trainable = model.parameter_counts()
    print(f"{'all':<{width}}  {_fmt(total):>14}  {_fmt(trainable):>12}")  # noqa: T201
    if cfg.llm.lora is not None and (cfg.multi_task or cfg.multi_rate):
        print("\n" + strategy_table(cfg))  # noqa: T201
    print(f"trainable: {trainable}")  # noqa: T201
    return 0


def strategy_table(cfg) -> str:
    """Trainable parameters of the model under every LoRA strategy that applies to it (Omni-AVSR -S /
    -T / -ST, Llama-MTSK's multi-scale / specific-scale / multi-specific-scale)."""
    import dataclasses

    from llama_avsr.config import LORA_SPECIFIC_TO
    from llama_avsr.models.avsr import AVSRModel

    rows = []
    for strategy, keys in (
        ("shared", ["task"]),
        ("specific", LORA_SPECIFIC_TO),
        ("shared+specific", LORA_SPECIFIC_TO),
    ):
        for key in keys:
            lora = dataclasses.replace(cfg.llm.lora, strategy=strategy, specific_to=key)
            try:
                variant = dataclasses.replace(
                    cfg, llm=dataclasses.replace(cfg.llm, lora=lora), prompt=cfg.prompt
                )
            except ValueError:  # e.g. keyed on tasks in a single-task model
                continue
            _, trainable = AVSRModel(variant, meta=True).parameter_counts()
            name = strategy if strategy == "shared" else f"{strategy} by {key}"
            current = (strategy, key if strategy != "shared" else "task") == (
                cfg.llm.lora.strategy,
                cfg.llm.lora.specific_to if cfg.llm.lora.strategy != "shared" else "task",
            )
            rows.append(
                (name + (" (this config)" if current else ""), len(variant.all_adapters()), trainable)
            )
    width = max(len(r[0]) for r in rows)
    lines = [f"{'LoRA strategy':<{width}}  {'adapters':>8}  {'trainable':>12}"]
    lines += [f"{n:<{width}}  {a:>8}  {_fmt(t):>12}" for n, a, t in rows]
    return "\n".join(lines)
