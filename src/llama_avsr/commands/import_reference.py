"""``llama-avsr import-reference``: a released Llama-AVSR ``.pth`` checkpoint → our model directory."""

from __future__ import annotations

import argparse
import json
import logging
import sys

HELP = (
    "import a released Llama-AVSR, Omni-AVSR or Llama-MTSK checkpoint (.pth, reference key layout) "
    "into a model directory"
)
DESCRIPTION = (
    HELP + ". The recipe (--config: a packaged recipe such as paper/vsr, or any experiment YAML; "
    "key.path=value overrides may follow) must describe the architecture the checkpoint was trained with. "
    "Projector, LLM LoRA (lora_down → LoRA A, lora_up → LoRA B, scaling alpha/reduction) and AV-HuBERT LoRA "
    "tensors are mapped and checked (every trainable tensor present, every shape equal); the frozen base "
    "weights the file also carries are ignored and taken from the recipe's named base models (the rows "
    "of the added special tokens and AV-HuBERT's BatchNorm statistics excepted). Omni-AVSR and Llama-MTSK "
    "checkpoints need a recipe with their compression.ratios and LoRA strategy (per-rate projectors "
    "audio_proj.I; task LoRA lora_down_Q.audio ...; Llama-MTSK's per-rate LoRA local_loras.I and global "
    "global_lora: llm.lora.specific_to=rates). The file is read with "
    "torch.load(weights_only=True): no pickled code runs. Then: llama-avsr eval --model OUT ..."
)
EXAMPLES = """\
llama-avsr import-reference VSR_AVH-L_Llama3.1-8B_lrs3vox_down3_seed42.pth --config paper/vsr -o models/vsr-released
llama-avsr import-reference my_run.pth --config paper/avsr -o models/mine model.llm.source=meta-llama/Llama-2-7b-hf
llama-avsr import-reference omni_st.pth --config paper/omni -o models/omni-st
llama-avsr import-reference mtsk_avsr.pth --config paper/omni -o models/mtsk model.tasks=[avsr] train.task_weights=null model.llm.lora.specific_to=rates model.encoders.avhubert.options.lora=false
"""

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="the released checkpoint (.pth state dict, or a Lightning .ckpt)")
    p.add_argument(
        "--config",
        required=True,
        help="recipe name (paper/asr|vsr|avsr) or experiment YAML it was trained with",
    )
    p.add_argument("-o", "--out", required=True, help="model directory to write")
    p.add_argument(
        "--skip-base-check",
        action="store_true",
        help="do not compare the file's frozen weights with the named base models (faster on 8B models)",
    )
    p.add_argument("--json", action="store_true", help="print the import report as JSON")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides of the recipe")


def run(args: argparse.Namespace) -> int:
    from llama_avsr.experiment import ExperimentConfig
    from llama_avsr.model_dir import ModelDirError
    from llama_avsr.reference import ReferenceCheckpointError, import_reference

    try:
        exp = ExperimentConfig.load(args.config, args.overrides)
        _, report = import_reference(args.checkpoint, exp, args.out, check_base=not args.skip_base_check)
    except (ReferenceCheckpointError, ModelDirError, FileNotFoundError) as e:
        print(f"import-reference: {e}", file=sys.stderr)  # noqa: T201
        return 1
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))  # noqa: T201
    else:
        print(report.summary())  # noqa: T201
        print(f"model directory: {args.out}")  # noqa: T201
    return 0
