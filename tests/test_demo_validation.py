"""The demo validates on the validation split and lets it choose the final model (issue #15)."""

from __future__ import annotations

import pytest

from llama_avsr.commands.demo import DEMO_CONFIG, demo_overrides, task_config, validation_line
from llama_avsr.config import find_recipe, load_yaml
from llama_avsr.experiment import ExperimentConfig


@pytest.mark.parametrize("task", ["asr", "vsr", "avsr"])
def test_every_demo_model_validates_on_the_validation_split_and_is_chosen_by_it(task, tmp_path):
    exp = task_config(load_yaml(DEMO_CONFIG), task, tmp_path, 9.0, demo_overrides(100, []))
    assert exp.data.val_csv == "synth_val.csv" and exp.data.test_csv == "synth_test.csv"
    assert exp.train.validation_wer and exp.train.val_beams == 1  # greedy: cheap enough for the budget
    assert 0 < exp.train.val_every_steps and exp.train.select == "best_val_wer"
    # the packaged single-task recipes say the same (llama-avsr train --config demo/<task>)
    recipe = ExperimentConfig.load(find_recipe(f"demo/{task}"))
    assert (recipe.data.val_csv, recipe.train.select) == ("synth_val.csv", "best_val_wer")


def test_demo_without_validation_utterances_takes_the_last_weights(tmp_path):
    exp = task_config(load_yaml(DEMO_CONFIG), "avsr", tmp_path, 9.0, demo_overrides(0, []))
    assert exp.data.val_csv is None and exp.train.select == "last"
    # an explicit choice of the user still wins
    exp = task_config(
        load_yaml(DEMO_CONFIG), "avsr", tmp_path, 9.0, demo_overrides(0, ["train.select=average_last"])
    )
    assert exp.train.select == "average_last"


def test_validation_line_shows_the_curve_and_the_chosen_weights():
    training = {
        "val_wer": [{"step": 150, "wer": 0.2}, {"step": 300, "wer": 0.081}, {"step": 396, "wer": 0.0825}],
        "selection": {"select": "best_val_wer", "step": 300, "val_wer": 0.081, "checkpoints": ["x.ckpt"]},
    }
    line = validation_line(training, 100)
    assert "100 utterances, greedy" in line and "not a test result" in line
    assert "step 150: 20.00 %, step 300: 8.10 %, step 396: 8.25 %" in line
    assert line.endswith("final model: step 300 (best_val_wer)")
