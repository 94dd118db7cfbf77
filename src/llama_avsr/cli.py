"""``llama-avsr``: one command with sub-commands.

Each sub-command lives in ``llama_avsr/commands/<name>.py`` and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``.  Modules are imported lazily so ``--help`` is fast
and a sub-command's heavy dependencies load only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

#: sub-command name → module under llama_avsr.commands (order = order in --help)
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "synth": "synth",
    "prepare": "prepare",
    "train": "train",
    "eval": "evaluate",
    "transcribe": "transcribe",
    "params": "params",
    "bench": "bench",
    "import-reference": "import_reference",
    "export": "export",
}


def _available() -> dict[str, object]:
    mods = {}
    for name, mod in COMMANDS.items():
        try:
            mods[name] = importlib.import_module(f"llama_avsr.commands.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"llama_avsr.commands.{mod}":
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-avsr",
        description="Llama-AVSR: speech recognition from audio (ASR), lip video (VSR) or both (AVSR) with an LLM.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _available().items():
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # PEFT calls a transformers API that warns about its own deprecation on every model build
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * (args.verbose + 1)
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
