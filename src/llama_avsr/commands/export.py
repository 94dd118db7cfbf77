"""``llama-avsr export``: copy a model (directory or hub repository), optionally with the LLM LoRA merged,
and optionally push it to the Hugging Face hub."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile

HELP = "export a model directory: merge the LLM LoRA for deployment (--merge-lora) and/or push it to the hub"
DESCRIPTION = (
    HELP + ". --model is a model directory or a hub repository id (owner/name). With --merge-lora the LoRA "
    "adapters are merged into the LLM weights and the LLM is written as a complete Hugging Face folder "
    "(<out>/llm, safetensors): the result loads and transcribes like the original, without PEFT. "
    "--push-to-hub OWNER/NAME uploads the result (a token from `hf auth login` or HF_TOKEN)."
)
EXAMPLES = """\
llama-avsr export --model runs/paper-avsr/model --merge-lora -o deploy/avsr
llama-avsr export --model runs/paper-avsr/model --push-to-hub me/llama-avsr-lrs3 --private
"""

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory or hub repository id (owner/name)")
    p.add_argument("-o", "--out", default=None, help="directory to write (required unless --push-to-hub)")
    p.add_argument("--merge-lora", action="store_true", help="merge the LLM LoRA into the base weights")
    p.add_argument("--revision", default=None, help="branch, tag or commit when --model is a hub repository")
    p.add_argument(
        "--push-to-hub", metavar="REPO_ID", default=None, help="upload the result to this repository"
    )
    p.add_argument("--private", action="store_true", help="create the hub repository as private")
    p.add_argument("--commit-message", default=None, help="commit message of the upload")


def run(args: argparse.Namespace) -> int:
    from llama_avsr.model_dir import ModelDirError, copy_model_dir, export_merged, push_to_hub

    if args.out is None and args.push_to_hub is None:
        print("export: give --out DIR and/or --push-to-hub OWNER/NAME", file=sys.stderr)  # noqa: T201
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="llama-avsr-export-") as scratch:
            out = args.out or f"{scratch}/model"
            if args.merge_lora:
                export_merged(args.model, out, revision=args.revision)
            elif args.out is not None or not _is_local(args.model):
                copy_model_dir(args.model, out, revision=args.revision)
            else:  # pushing a local directory as it is
                out = args.model
            if args.push_to_hub:
                url = push_to_hub(
                    out, args.push_to_hub, private=args.private, commit_message=args.commit_message
                )
                print(f"pushed to {args.push_to_hub}: {url}")  # noqa: T201
    except ModelDirError as e:
        print(f"export: {e}", file=sys.stderr)  # noqa: T201
        return 1
    if args.out:
        print(f"model directory: {args.out}")  # noqa: T201
    return 0


def _is_local(model: str) -> bool:
    from pathlib import Path

    from llama_avsr.model_dir import CONFIG

    return (Path(model) / CONFIG).is_file()
