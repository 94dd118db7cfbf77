"""Discoverable configuration and one CLI convention: packaged recipes by name, --print-config, config keys,
"did you mean", one-line errors, --version / -v / -vv, examples and defaults in --help, clean logs."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llama_avsr import config as C
from llama_avsr.cli import COMMANDS, build_parser, main
from llama_avsr.training.config import ExperimentConfig

REPO = Path(__file__).resolve().parents[1]
RECIPES = [
    "demo/asr",
    "demo/avsr",
    "demo/omni",
    "demo/vsr",
    "paper/asr",
    "paper/avsr",
    "paper/omni",
    "paper/vsr",
]


# ------------------------------------------------------------------------------------------------
# recipes by name


def test_packaged_recipes_load_by_name_and_are_named_after_in_runs():
    assert C.list_recipes() == RECIPES
    for name in RECIPES:
        exp = ExperimentConfig.load(name)
        assert exp.train.out_dir == f"runs/{name.replace('/', '-')}"
        assert (C.CONFIG_DIR / f"{name}.yaml").is_file()  # inside the package: shipped in the wheel
    assert ExperimentConfig.load("paper/vsr").train.lr == 5e-4
    assert ExperimentConfig.load("paper/avsr").model.modalities == ["audio", "video"]


def test_recipe_paths_still_work_and_a_set_out_dir_wins(tmp_path):
    by_path = ExperimentConfig.load(REPO / "configs" / "paper" / "asr.yaml")
    assert by_path == ExperimentConfig.load("paper/asr") and by_path.train.out_dir == "runs/paper-asr"
    assert ExperimentConfig.load("paper/asr.yaml").train.out_dir == "runs/paper-asr"
    mine = tmp_path / "my_asr.yaml"
    mine.write_text(C.find_recipe("paper/asr").read_text())
    assert ExperimentConfig.load(mine).train.out_dir == "runs/my_asr"
    assert ExperimentConfig.load("paper/asr", ["train.out_dir=elsewhere"]).train.out_dir == "elsewhere"


@pytest.mark.parametrize("task,streams", [("asr", ["audio"]), ("vsr", ["video"])])
def test_demo_asr_and_vsr_are_the_avsr_demo_cut_to_one_stream(task, streams, tmp_path):
    """The demo command derives its ASR/VSR models from demo/avsr; the packaged recipes must agree."""
    from llama_avsr.commands.demo import task_config

    base = C.load_yaml(C.find_recipe("demo/avsr"))
    derived = task_config(base, task, tmp_path, base["train"]["max_minutes"], [])
    packaged = ExperimentConfig.load(f"demo/{task}", [f"data.root={tmp_path / 'corpus'}"])
    assert list(packaged.model.streams) == streams
    derived.train.out_dir = packaged.train.out_dir
    # the demo caches features in a folder that its stages share; a recipe run alone, in memory
    assert derived.train.feature_cache == str(tmp_path / "features")
    assert packaged.train.feature_cache == base["train"]["feature_cache"] == "memory"
    derived.train.feature_cache = packaged.train.feature_cache
    assert packaged == derived


def test_unknown_recipe_suggests_the_closest():
    with pytest.raises(C.ConfigError, match=r"did you mean 'paper/asr'\?.*recipes: demo/asr"):
        C.find_recipe("paper/asx")


# ------------------------------------------------------------------------------------------------
# --print-config, config show / keys / recipes


def test_print_config_is_the_resolved_yaml_and_reads_back(capsys, tmp_path):
    assert main(["train", "--config", "paper/asr", "train.lr=5e-4", "-o", "runs/x", "--print-config"]) == 0
    printed = capsys.readouterr().out
    data = yaml.safe_load(printed)
    assert data["train"]["lr"] == 5e-4 and data["train"]["out_dir"] == "runs/x"
    assert data["model"]["prompt"] == "Transcribe speech to text."  # derived values are resolved
    saved = tmp_path / "saved.yaml"
    saved.write_text(printed)
    assert ExperimentConfig.load(saved) == ExperimentConfig.load(
        "paper/asr", ["train.lr=5e-4", "train.out_dir=runs/x"]
    )
    assert not Path("runs/x").exists()  # nothing trained, nothing written
    assert main(["config", "show", "paper/asr", "train.lr=5e-4", "train.out_dir=runs/x"]) == 0
    assert capsys.readouterr().out == printed


def test_config_keys_lists_every_key_with_type_default_and_help(capsys):
    keys = C.config_keys(ExperimentConfig)
    names = [k.key for k in keys]
    assert len(names) == len(set(names)) > 60
    assert all(k.help for k in keys), [k.key for k in keys if not k.help]
    lr = next(k for k in keys if k.key == "train.lr")
    assert (lr.type, lr.default) == ("float", "0.001") and "learning rate" in lr.help
    assert next(k for k in keys if k.key == "data.noise_file").type == "str | null"
    assert "model.streams.<name>.compression.ratio" in names and "model.llm.lora.alpha" in names

    assert main(["config", "keys", "data."]) == 0
    out = capsys.readouterr().out
    assert "data.noise_file: str | null = null" in out and "train.lr" not in out
    assert main(["config", "keys", "noise", "--markdown"]) == 0
    assert "| `data.noise_file` |" in capsys.readouterr().out
    assert main(["config", "recipes"]) == 0
    out = capsys.readouterr().out
    assert all(r in out for r in RECIPES)


def test_field_docs_reads_docstring_entries_and_comments():
    from dataclasses import dataclass

    @dataclass
    class Demo:
        """One line.

        a / b: shared help
            continued here.
        ``c``: quoted name.
        """

        a: int = 1
        b: int = 2
        c: str = "x"
        #: from a comment above
        d: float = 0.5
        e: bool = False  # trailing comment

    docs = C.field_docs(Demo)
    assert docs["a"] == docs["b"] == "shared help continued here."
    assert docs == {**docs, "c": "quoted name.", "d": "from a comment above", "e": "trailing comment"}


# ------------------------------------------------------------------------------------------------
# wrong keys and values: one line, "did you mean", no traceback


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lrr=1e-3", "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        (
            "model.llm.lora.alhpa=3",
            "unknown key 'model.llm.lora.alhpa' (did you mean 'model.llm.lora.alpha'?)",
        ),
        ("trian.lr=1", "unknown key 'trian' (did you mean 'train'?)"),
        ("train.epochs=ten", "train.epochs: expected int, got 'ten'"),
        ("train.eval_at_end=3", "train.eval_at_end: expected bool, got 3"),
        ("train.lr=[1", "override 'train.lr=[1': the value is not valid YAML"),
        ("data.modality_dropout={[audio]: 0.1}", "the value is not valid YAML (found unhashable key"),
        (
            "data.modality_dropout={audio: 0.1, audio: 0.2}",
            "the value is not valid YAML (key 'audio' is written twice (line 1))",
        ),
        ("train.precision=fp8", "train.precision must be one of"),
        ("train", "override 'train' must look like key.path=value"),
    ],
)
def test_config_mistakes_are_one_line_errors(override, message, capsys):
    assert main(["train", "--config", "paper/asr", override, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llama-avsr train: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_missing_config_file_or_section_is_one_line(tmp_path, capsys):
    assert main(["params", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml' is neither a file nor a packaged recipe" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {root: x}\n")
    assert main(["train", "--config", str(bad), "--print-config"]) == 2
    assert (
        capsys.readouterr().err.strip() == "llama-avsr train: an experiment config needs a `model:` section"
    )
    bad.write_text("model: [unclosed\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_a_key_written_twice_in_a_recipe_is_refused_with_both_lines(tmp_path, capsys):
    """PyYAML keeps the last of two equal keys without a word: a recipe edited in two places would run
    with whichever came last. YAML merge keys (``<<: *anchor``) are not duplicates."""
    from llama_avsr.config import find_recipe, load_yaml

    recipe = find_recipe("demo/avsr").read_text()
    twice = tmp_path / "twice.yaml"
    twice.write_text(recipe.replace("  lr: 3.0e-3\n", "  lr: 3.0e-3\n  lr: 1.0e-3\n", 1))
    line = 1 + recipe.splitlines().index("  lr: 3.0e-3")
    assert main(["train", "--config", str(twice), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert f"not valid YAML (key 'lr' is written twice (lines {line} and {line + 1}))" in err
    assert err.count("\n") == 1
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &b {lr: 1, epochs: 2}\ntrain:\n  <<: *b\n  lr: 3\n")
    assert load_yaml(merged)["train"] == {"lr": 3, "epochs": 2}


# ------------------------------------------------------------------------------------------------
# one CLI convention


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == "llama-avsr 0.1.0"


def _subparsers():
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return action.choices


def test_every_subcommand_has_examples_and_shows_each_default_once():
    subs = _subparsers()
    assert set(subs) == set(COMMANDS)
    for name, p in subs.items():
        text = p.format_help()
        assert "examples:\n  llama-avsr " + name in text, name
        assert text.count("(default:") == len(set(text.split("(default:"))) - 1  # no repeated blocks
        for block in text.split("\n  -")[1:]:
            assert block.count("default") <= 1 or block.count("(default:") == 0, (name, block)


def test_shared_options_are_spelled_the_same_everywhere():
    subs = _subparsers()
    for name in ("train", "eval", "bench", "demo", "synth", "prepare", "import-reference", "export"):
        assert {"-o", "--out"} <= set(subs[name]._option_string_actions), name
    for name in ("eval", "transcribe", "export", "bench"):
        assert "--model" in subs[name]._option_string_actions, name
    for name in ("eval", "transcribe"):
        assert subs[name]._option_string_actions["--device"].default == "auto"
    for name in subs:
        assert "-v" in subs[name]._option_string_actions


@pytest.mark.parametrize(
    "argv,level", [([], logging.WARNING), (["-v"], logging.INFO), (["-vv"], logging.DEBUG)]
)
def test_verbosity_levels_before_or_after_the_subcommand(argv, level, capsys):
    for line in ([*argv, "config", "recipes"], ["config", "recipes", *argv]):
        assert main(line) == 0
        assert logging.getLogger().level == level
    capsys.readouterr()


def test_overrides_may_follow_options(capsys):
    assert (
        main(
            ["train", "--config", "paper/asr", "--print-config", "train.lr=2e-4", "-o", "r", "train.epochs=3"]
        )
        == 0
    )
    data = yaml.safe_load(capsys.readouterr().out)
    assert (data["train"]["lr"], data["train"]["epochs"], data["train"]["out_dir"]) == (2e-4, 3, "r")
    with pytest.raises(SystemExit):
        main(["config", "recipes", "stray"])  # no overrides there: still an error


def test_resolve_device():
    from llama_avsr.commands import resolve_device

    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")


# ------------------------------------------------------------------------------------------------
# clean logs


def test_lightning_lines_reach_one_handler():
    """Lightning's package attaches a stream handler at import; after setup every record has one."""
    from llama_avsr.logs import _StderrHandler, setup_logging, tidy_library_loggers

    setup_logging(1)
    import lightning  # noqa: F401

    logging.getLogger("lightning").addHandler(logging.StreamHandler())  # as `import lightning` does
    tidy_library_loggers()
    lg = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handlers = []
    while lg is not None:
        handlers += [
            h for h in lg.handlers if type(h) in (logging.StreamHandler, _StderrHandler)
        ]  # not pytest's
        lg = lg.parent if lg.propagate else None
    assert len(handlers) == 1


def test_log_records_follow_a_replaced_stderr_and_survive_a_closed_one(monkeypatch):
    """A harness (pytest, a notebook) swaps sys.stderr and closes the old one: records go to the
    current stderr, and nothing fails with "I/O operation on closed file" (CI saw that before)."""
    import io

    from llama_avsr.logs import setup_logging

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging(0)
    errors: list[BaseException] = []
    monkeypatch.setattr(logging.Handler, "handleError", lambda self, record: errors.append(sys.exc_info()[1]))
    logging.getLogger("llama_avsr.test").warning("one")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("llama_avsr.test").warning("two")
    assert not errors, errors
    assert "two" in second.getvalue()


def test_native_stderr_lines_are_filtered_and_the_rest_passes():
    script = (
        "import os, sys\n"
        "from llama_avsr.logs import filter_native_stderr\n"
        "filter_native_stderr()\n"
        "os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "os.write(2, b'W0000 00:00:1796077862.418123   11975 inference_feedback_manager.cc:114] Feedback\\n')\n"
        "os.write(2, b'bar  10%\\rbar  20%')\n"
        "os.write(2, b'\\nkept line\\n')\n"
        "print('stdout', flush=True)\n"
        "raise SystemExit(3)\n"
    )
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=600)
    assert r.returncode == 3 and r.stdout == b"stdout\n"
    assert r.stderr == b"bar  10%\rbar  20%\nkept line\n"
