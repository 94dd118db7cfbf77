"""examples/slurm_train.sbatch as a pip-installed user runs it: a recipe by name, the `llama-avsr` of the
environment, the AV-HuBERT checkpoint passed only to recipes that have that encoder. `srun` and
`scontrol` are stand-ins that record what the job would start (no SLURM here)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "slurm_train.sbatch"


def _stand_in(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def _run(tmp_path: Path, env: dict[str, str], *args: str) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "srun.args"
    _stand_in(
        bin_dir / "srun", f'printf "%q " "$MASTER_ADDR" "$MASTER_PORT" "$@" > {shlex.quote(str(record))}\n'
    )
    _stand_in(bin_dir / "scontrol", "echo node001\necho node002\n")
    src = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    cli = f'PYTHONPATH={shlex.quote(src)} exec {shlex.quote(sys.executable)} -m llama_avsr.cli "$@"\n'
    _stand_in(bin_dir / "llama-avsr", cli)
    slurm = {"SLURM_JOB_NODELIST": "node[001-002]", "SLURM_JOB_ID": "4242", "SLURM_NTASKS_PER_NODE": "8"}
    full = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", str(tmp_path)),
        **slurm,
        "SLURM_NNODES": "2",
        "DATA_ROOT": "/data/lrs3",
        "TRAIN_CSV": "train.csv",
        **env,
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=tmp_path, env=full, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    addr, port, *argv = shlex.split(record.read_text())
    assert (addr, port) == ("node001", "19242")  # the first node; 15000 + the job id's last 4 digits
    return argv


@pytest.mark.parametrize("config, avhubert", [("paper/asr", False), ("paper/vsr", True)])
def test_job_runs_the_installed_command_with_a_recipe_name(tmp_path, config, avhubert):
    argv = _run(tmp_path, {"CONFIG": config, "AVHUBERT": "/models/av.pt"}, "train.lr=5e-4")
    assert argv[0] == "--kill-on-bad-exit=1" and argv[1] == str(tmp_path / "bin" / "llama-avsr")
    assert argv[2:6] == ["train", "--config", config, "--resume"]
    assert {
        "train.devices=8",
        "train.num_nodes=2",
        "data.root=/data/lrs3",
        "data.train_csv=train.csv",
    } <= set(argv)
    assert ("model.encoders.avhubert.source=/models/av.pt" in argv) is avhubert
    assert argv[-1] == "train.lr=5e-4" and not any(a.startswith("train.out_dir=") for a in argv)


def test_out_sets_the_run_folder(tmp_path):
    argv = _run(tmp_path, {"OUT": "runs/vsr-lr5e-4", "CONFIG": "paper/vsr"})
    assert "train.out_dir=runs/vsr-lr5e-4" in argv
