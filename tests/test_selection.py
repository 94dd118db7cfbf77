"""Choosing the final model: last, average of the last checkpoints, or best validation WER."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llama_avsr.config import ModelConfig
from llama_avsr.data.config import DataConfig
from llama_avsr.training.config import ExperimentConfig, TrainConfig
from llama_avsr.training.run import select_checkpoints


def _ckpts(folder: Path, steps: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for s in steps:
        p = folder / f"0-step={s}.ckpt"
        torch.save({"state_dict": {"model.w": torch.tensor([float(s)])}}, p)
        out.append(p)
    return out


def test_last_and_average_last(tmp_path: Path):
    _ckpts(tmp_path, [2, 4, 6])
    (tmp_path / "last.ckpt").write_bytes(b"")
    ckpts, rec = select_checkpoints("last", 2, tmp_path, [])
    assert [p.name for p in ckpts] == ["0-step=6.ckpt"] and rec == {
        "select": "last",
        "checkpoints": ["0-step=6.ckpt"],
    }
    ckpts, _ = select_checkpoints("average_last", 2, tmp_path, [])
    assert [p.name for p in ckpts] == ["0-step=4.ckpt", "0-step=6.ckpt"]


def test_best_val_wer_takes_the_best_validation(tmp_path: Path):
    _ckpts(tmp_path, [2, 4, 6])
    (best_file,) = _ckpts(tmp_path / "best", [4])
    best = SimpleNamespace(best_model_path=str(best_file), best_model_score=torch.tensor(0.30))
    history = [(2, 0.50), (4, 0.30), (6, 0.40)]
    ckpts, rec = select_checkpoints("best_val_wer", 3, tmp_path, history, best)
    assert ckpts == [best_file] and rec["step"] == 4 and rec["val_wer"] == 0.30
    # the final weights, validated after training, win when strictly better
    ckpts, rec = select_checkpoints("best_val_wer", 3, tmp_path, [*history[:2], (6, 0.20)], best)
    assert [p.name for p in ckpts] == ["0-step=6.ckpt"] and rec["step"] == 6 and rec["val_wer"] == 0.20
    # a tie keeps the earlier weights (as the best-checkpoint callback does)
    ckpts, rec = select_checkpoints("best_val_wer", 3, tmp_path, [*history[:2], (6, 0.30)], best)
    assert ckpts == [best_file] and rec["step"] == 4
    # a run shorter than val_every_steps: only the final weights were validated, after fit, so the
    # best-checkpoint callback saved nothing; they are the model, with their step and WER
    ckpts, rec = select_checkpoints(
        "best_val_wer", 3, tmp_path, [(6, 0.25)], SimpleNamespace(best_model_path="")
    )
    assert [p.name for p in ckpts] == ["0-step=6.ckpt"] and (rec["step"], rec["val_wer"]) == (6, 0.25)
    # nothing validated: the last weights, said so
    ckpts, rec = select_checkpoints("best_val_wer", 3, tmp_path, [], SimpleNamespace(best_model_path=""))
    assert [p.name for p in ckpts] == ["0-step=6.ckpt"] and "step" not in rec


def test_select_option_is_checked():
    with pytest.raises(ValueError, match="train.select"):
        TrainConfig(select="best")
    with pytest.raises(ValueError, match="val_csv"):
        ExperimentConfig(ModelConfig.__new__(ModelConfig), DataConfig(), TrainConfig(select="best_val_wer"))
    with pytest.raises(ValueError, match="val_wer"):
        ExperimentConfig(
            ModelConfig.__new__(ModelConfig),
            DataConfig(val_csv="v.csv"),
            TrainConfig(select="best_val_wer", val_wer=False),
        )
    with pytest.raises(ValueError, match="sharded|strategy"):
        TrainConfig(strategy="fsdp", select="best_val_wer")
    assert TrainConfig().validation_wer and not TrainConfig(strategy="fsdp").validation_wer


def test_train_compile_is_not_an_accepted_option():
    """It was accepted and ignored; now an override of it is an error (docs/performance.md says why)."""
    from llama_avsr.config import from_dict

    with pytest.raises(ValueError, match="compile"):
        from_dict(TrainConfig, {"compile": True})
