"""``llama-avsr``: one command with sub-commands.

Each sub-command lives in ``llama_avsr/commands/<name>.py`` and exposes ``HELP`` (one line),
``EXAMPLES`` (shown under its ``--help``), ``add_arguments(parser)`` and ``run(args) -> int``.  Modules are
imported lazily so ``--help`` is fast and a sub-command's heavy dependencies load only when it runs.

Conventions shared by every sub-command: ``--config`` takes a packaged recipe name (``paper/asr``) or a
YAML path, followed by ``key.path=value`` overrides anywhere on the line; ``--model`` names a model
directory or hub repository; ``-o/--out`` is where results go; ``--device auto`` picks CUDA when there is
one; ``-v`` shows info messages and ``-vv`` debug ones (before or after the sub-command).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import textwrap
import warnings

from llama_avsr import __version__
from llama_avsr.config import ConfigError
from llama_avsr.errors import UserError

#: sub-command name → module under llama_avsr.commands (order = order in --help)
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "synth": "synth",
    "prepare": "prepare",
    "train": "train",
    "eval": "evaluate",
    "transcribe": "transcribe",
    "serve": "serve",
    "params": "params",
    "bench": "bench",
    "import-reference": "import_reference",
    "export": "export",
    "config": "config",
}

EXAMPLES = """\
examples:
  llama-avsr demo                                   # the whole job on a CPU, from nothing
  llama-avsr prepare raw/ -o corpus --dataset mine --split-ratio 0.9,0.05,0.05
  llama-avsr train --config paper/avsr data.root=/data/lrs3 train.devices=8 train.strategy=fsdp
  llama-avsr train --config demo/asr --print-config  # the resolved configuration, as YAML
  llama-avsr config keys train.                     # every key with type, default and help
  llama-avsr eval --model runs/paper-avsr/model --snr clean,0
  llama-avsr transcribe --model runs/paper-avsr/model my_video.mp4
"""


class HelpFormatter(argparse.HelpFormatter):
    """Wrap one-line descriptions, keep multi-line text (layouts, examples) as written, and append
    ``(default: X)`` only where the help does not already say what the default is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paras = text.split("\n\n")
        return "\n\n".join(
            p
            if "\n" in p.strip("\n")
            else textwrap.fill(p, width, initial_indent=indent, subsequent_indent=indent)
            for p in paras
        )

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or (isinstance(default, list) and not default)
            or not action.option_strings
            or isinstance(action, argparse._CountAction)
        ):
            return text
        return f"{text} (default: %(default)s)"


def add_verbosity(parser: argparse.ArgumentParser, default: object = 0) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default,
        help="-v: info messages; -vv: debug, libraries' too",
    )


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
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"llama-avsr {__version__}")
    add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _available().items():
        examples = getattr(mod, "EXAMPLES", "")
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            epilog=f"examples:\n{textwrap.indent(examples.strip(), '  ')}\n" if examples else None,
            formatter_class=HelpFormatter,
        )
        mod.add_arguments(p)
        add_verbosity(p, default=argparse.SUPPRESS)
        p.set_defaults(_run=mod.run)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting ``key.path=value`` overrides stand anywhere on the line (argparse alone takes a
    trailing ``nargs="*"`` positional only right after the other positionals)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if isinstance(getattr(args, "overrides", None), list) and all(
            "=" in e and not e.startswith("-") for e in extra
        ):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    # PEFT calls a transformers API that warns about its own deprecation on every model build
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    parser = build_parser()
    args = parse_args(parser, argv)
    from llama_avsr.logs import setup_logging

    setup_logging(getattr(args, "verbose", 0))
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (UserError, ConfigError, FileNotFoundError) as e:
        # a mistake the user can fix (command line, config, a file): one line naming it and the fix;
        # the traceback with -v
        if getattr(args, "verbose", 0):
            logging.getLogger("llama_avsr").error("traceback", exc_info=True)
        print(f"llama-avsr {args.command}: {' '.join(str(e).split())}", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        print(f"llama-avsr {args.command}: interrupted", file=sys.stderr)  # noqa: T201
        return 130


def entry() -> int:
    """The ``llama-avsr`` console script: :func:`main` with the native libraries' stderr chatter
    filtered out (``-vv`` keeps it)."""
    argv = sys.argv[1:]
    verbosity = sum(len(a) - 1 for a in argv if a[:2] == "-v" and set(a[1:]) == {"v"}) + argv.count(
        "--verbose"
    )
    if verbosity < 2:
        from llama_avsr.logs import filter_native_stderr

        filter_native_stderr()
    return main(argv)


if __name__ == "__main__":
    sys.exit(entry())
