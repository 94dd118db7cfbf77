"""A trained model as a directory: everything needed to rebuild it, without pickles.

    <dir>/config.json              the experiment config (model, data, train, decode), JSON
    <dir>/trainable.safetensors    trainable weights (projectors, LoRA, trained encoders + their buffers)
    <dir>/README.md                a generated model card (configuration, evaluation results if any)
    <dir>/results.json             evaluation results, when present

Frozen base weights (LLM, pretrained encoders) are not copied: the config names them (hub id,
embedded name or path) and they are loaded from there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from llama_avsr.models.avsr import AVSRModel
from llama_avsr.training.config import ExperimentConfig

log = logging.getLogger(__name__)

CONFIG = "config.json"
WEIGHTS = "trainable.safetensors"
RESULTS = "results.json"


class ModelDirError(ValueError):
    """A model directory that is missing files or does not match its configuration."""


def save_model_dir(
    model: AVSRModel,
    exp: ExperimentConfig,
    out: str | Path,
    state: dict[str, torch.Tensor] | None = None,
    results: dict[str, Any] | None = None,
) -> Path:
    """Write the model directory atomically (built in a temp dir, then renamed over ``out``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        (tmp / CONFIG).write_text(json.dumps(exp.to_dict(), indent=2))
        if state is not None:
            model.load_trainable(state)
        model.save_trainable(tmp / WEIGHTS)
        if results:
            (tmp / RESULTS).write_text(json.dumps(results, indent=2))
        (tmp / "README.md").write_text(model_card(exp, model, results))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("model saved to %s", out)
    return out


def load_experiment(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    cfg_file = path / CONFIG
    if not cfg_file.is_file():
        raise ModelDirError(f"{path}: not a model directory (no {CONFIG})")
    try:
        return ExperimentConfig.from_dict(json.loads(cfg_file.read_text()))
    except (ValueError, TypeError) as e:
        raise ModelDirError(f"{cfg_file}: invalid configuration ({e})") from e


def load_model_dir(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[AVSRModel, ExperimentConfig]:
    """Rebuild the model from its config and load the trainable weights (safetensors, no pickle)."""
    path = Path(path)
    exp = load_experiment(path)
    if not (path / WEIGHTS).is_file():
        raise ModelDirError(f"{path}: no {WEIGHTS}")
    model = AVSRModel(exp.model)
    model.load_trainable(path / WEIGHTS)
    return model.to(device).eval(), exp


def update_results(path: str | Path, results: dict[str, Any]) -> None:
    """Merge evaluation results into ``results.json`` and refresh the model card."""
    path = Path(path)
    file = path / RESULTS
    merged = json.loads(file.read_text()) if file.is_file() else {}
    merged.update(results)
    file.write_text(json.dumps(merged, indent=2))
    exp = load_experiment(path)
    (path / "README.md").write_text(model_card(exp, None, merged))


def model_card(exp: ExperimentConfig, model: AVSRModel | None, results: dict[str, Any] | None) -> str:
    m = exp.model
    lines = [
        "# Llama-AVSR model",
        "",
        "Trained with [llama-avsr](https://github.com/). Load it with",
        "",
        "```python",
        "from llama_avsr.model_dir import load_model_dir",
        "model, exp = load_model_dir('<this directory>')",
        "```",
        "",
        "## Configuration",
        "",
    ]
    lines.append(f"- LLM: `{m.llm.source or m.llm.arch}` (LoRA: {m.llm.lora})")
    for name, s in m.streams.items():
        enc = m.encoders[s.encoder]
        lines.append(
            f"- stream `{name}`: encoder `{enc.kind}` from `{enc.source or enc.arch}` on {s.inputs}, "
            f"{s.compression.kind} ×{s.compression.ratio}, projector {s.projector.hidden}"
        )
    lines.append(f'- prompt: "{m.prompt}"')
    if model is not None:
        total, trainable = model.parameter_counts()
        lines.append(f"- parameters: {total:,} total, {trainable:,} trainable")
    if results:
        lines += ["", "## Evaluation", "", "```json", json.dumps(results, indent=2), "```"]
    return "\n".join(lines) + "\n"
