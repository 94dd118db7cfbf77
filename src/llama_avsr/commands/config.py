"""``llama-avsr config``: the packaged recipes, every config key, and a resolved configuration."""

from __future__ import annotations

import argparse

HELP = "list the packaged recipes and every config key (type, default, help); print a resolved config"
DESCRIPTION = (
    "Experiment configs have four sections: model, data, train, decode. `config keys` lists every key "
    "with its type, default and help (the dataclass documentation in llama_avsr/config.py, "
    "data/config.py, training/config.py, decoding/options.py); keys under model.encoders.<name> and "
    "model.streams.<name> hold for each entry of those mappings. Any key can be set on the command line "
    "of train / params / import-reference / bench / demo as key.path=value (the value is YAML: 5e-4, "
    "true, null, [a, b], {k: v})."
)
EXAMPLES = """\
llama-avsr config recipes
llama-avsr config keys                 # all keys
llama-avsr config keys data.           # the data section
llama-avsr config keys lr              # keys whose name contains "lr"
llama-avsr config show paper/vsr data.root=/data/lrs3 train.devices=8
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from llama_avsr.cli import HelpFormatter, add_verbosity

    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    keys = sub.add_parser("keys", help="every config key with type, default and help")
    keys.add_argument(
        "prefix", nargs="?", default="", help="only keys starting with (or, failing that, containing) this"
    )
    keys.add_argument("--markdown", action="store_true", help="a Markdown table instead of text")
    sub.add_parser("recipes", help="the recipes packaged with llama-avsr (for --config NAME)")
    show = sub.add_parser("show", help="the resolved config of a recipe with overrides, as YAML")
    show.add_argument("config", help="recipe name (paper/asr, demo/avsr, …) or YAML path")
    show.add_argument("overrides", nargs="*", help="key.path=value overrides")
    for q in (keys, show, sub.choices["recipes"]):
        q.formatter_class = HelpFormatter
        add_verbosity(q, default=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from llama_avsr import config as C

    if args.what == "recipes":
        for name in C.list_recipes():
            first = C.find_recipe(name).read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
            print(f"{name:<12} {first}")  # noqa: T201
        return 0
    from llama_avsr.training.config import ExperimentConfig

    if args.what == "show":
        exp = ExperimentConfig.load(args.config, args.overrides)
        print(C.dump_yaml(exp.to_dict()), end="")  # noqa: T201
        return 0
    keys = C.config_keys(ExperimentConfig)
    chosen = [k for k in keys if k.key.startswith(args.prefix)] or [k for k in keys if args.prefix in k.key]
    if not chosen:
        names = {k.key for k in keys} | {k.key.split(".")[-1] for k in keys}
        raise C.ConfigError(f"no config key matches {args.prefix!r}{C.did_you_mean(args.prefix, names)}")
    if args.markdown:
        print("| key | type | default | help |\n|---|---|---|---|")  # noqa: T201
        for k in chosen:
            print(f"| `{k.key}` | {k.type} | `{k.default}` | {k.help} |".replace("``", "`"))  # noqa: T201
        return 0
    import shutil
    import textwrap

    width = shutil.get_terminal_size((100, 20)).columns
    for k in chosen:
        default = f" = {k.default}" if k.default else ""
        print(f"{k.key}: {k.type}{default}")  # noqa: T201
        if k.help:
            print(textwrap.fill(k.help, width - 1, initial_indent="    ", subsequent_indent="    "))  # noqa: T201
    return 0
