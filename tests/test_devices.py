"""What ``auto`` precision and dtype resolve to on the machine the tests run on."""

from __future__ import annotations

import pytest
import torch

from llama_avsr.config import torch_dtype
from llama_avsr.devices import auto_dtype_name, native_bf16, resolve_device, resolve_precision
from llama_avsr.experiment import ExperimentConfig


def test_auto_follows_native_bf16_on_cpu():
    native = native_bf16("cpu")
    assert auto_dtype_name("auto", "cpu") == ("bfloat16" if native else "float32")
    assert resolve_precision("auto", "cpu") == ("bf16-mixed" if native else "32-true")


def test_explicit_settings_are_kept():
    assert auto_dtype_name("float32", "cpu") == "float32"
    assert auto_dtype_name("bfloat16", "cpu") == "bfloat16"
    assert resolve_precision("32-true", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_torch_dtype_auto_and_unknown():
    assert torch_dtype("auto") in (torch.bfloat16, torch.float32)
    with pytest.raises(ValueError, match="auto"):
        torch_dtype("float7")


@pytest.mark.parametrize("recipe", ["demo/asr", "demo/vsr", "demo/avsr"])
def test_demo_recipes_run_in_native_precision(recipe):
    exp = ExperimentConfig.load(recipe)
    assert exp.train.precision == "auto" and exp.model.llm.dtype == "auto"


def test_auto_device_picks_cuda_then_mps_then_cpu(monkeypatch):
    """``device="auto"`` (the API, eval, transcribe, serve, bench) runs on a GPU when there is one."""
    mps = getattr(torch.backends, "mps", None)
    for cuda, apple, want in [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        if mps is not None:
            monkeypatch.setattr(mps, "is_available", lambda apple=apple: apple)
        elif want == "mps":
            continue
        assert resolve_device("auto") == torch.device(want) and resolve_device(None) == torch.device(want)
    assert resolve_device("cuda:1") == torch.device("cuda:1") and resolve_device("cpu").type == "cpu"
