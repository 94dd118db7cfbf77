"""What `pip install llama-avsr` gets on a machine that already has its own torch (a GPU cluster's CUDA
build): torch is a lower bound, never a pin (the Makefile and CI pin the CPU build themselves), and the
wheel carries the recipes that `--config paper/asr` names and the `llama-avsr` command."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def test_torch_is_a_lower_bound_and_the_cpu_pin_stays_in_the_makefile():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (torch,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch"]
    assert [s.operator for s in torch.specifier] == [">="], f"torch must only be lower-bounded: {torch}"
    assert re.search(r"\binstall torch==\d", (REPO / "Makefile").read_text(encoding="utf-8"))


def test_the_wheel_holds_the_packaged_recipes_and_the_command(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("llama_avsr-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(z.read(info).decode())
        entry = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    for recipe in ("paper/asr", "paper/vsr", "paper/avsr", "paper/omni", "demo/asr", "demo/vsr", "demo/avsr"):
        assert f"llama_avsr/configs/{recipe}.yaml" in names, recipe
    assert "llama_avsr/configs/arch/llama-3.1-8b.json" in names
    assert "llama-avsr = llama_avsr.cli:entry" in entry
    torch = [Requirement(r) for r in metadata.get_all("Requires-Dist") if Requirement(r).name == "torch"]
    assert [str(r.specifier) for r in torch if r.marker is None] == [">=2.4"]
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"prepare", "dlib", "deepspeed", "quant", "wandb", "demo", "web"} <= extras
