"""Model directories: save → load identity, frozen-weight file, merged export, hub sharing (offline), errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_av import av_model_dict

from llama_avsr.config import ConfigError, ModelConfig, from_dict
from llama_avsr.data.collate import Collator
from llama_avsr.decoding.options import DecodingOptions
from llama_avsr.decoding.search import generate
from llama_avsr.model_dir import (
    CONFIG,
    FROZEN,
    WEIGHTS,
    ModelDirError,
    export_merged,
    from_pretrained,
    init_from_model_dirs,
    load_experiment,
    load_model_dir,
    push_to_hub,
    save_model_dir,
    save_pretrained,
    update_results,
)
from llama_avsr.models.avsr import AVSRModel
from llama_avsr.models.llm import load_tokenizer
from llama_avsr.training.config import ExperimentConfig

TEXTS = ["hello world", "the cat sat"]
OPTS = DecodingOptions(num_beams=3, max_new_tokens=6)


def model_cfg(ratio: int = 3) -> ModelConfig:
    return from_dict(
        ModelConfig,
        av_model_dict(
            {"kind": "stack", "ratio": ratio},
            {"kind": "stack", "ratio": 2},
            {"reduction": 8, "alpha": 4},
            video_layernorm=True,
        ),
    )


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def samples():
    g = torch.Generator().manual_seed(0)
    return [
        {
            "id": str(i),
            "text": t,
            "audio": 0.1 * torch.randn(n, generator=g),
            "video": torch.randn(f, 1, 48, 48, generator=g),
        }
        for i, (t, n, f) in enumerate(zip(TEXTS, [16000, 12000], [10, 8], strict=True))
    ]


def perturb(model: AVSRModel) -> AVSRModel:
    """Non-trivial adapters and BatchNorm statistics (as after training in the reference's train mode)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        for n, b in model.named_buffers():
            if n.endswith("running_mean"):
                b.add_(0.1 * torch.randn(b.shape, generator=g))
    return model.eval()


def logits(model: AVSRModel, batch) -> torch.Tensor:
    with torch.no_grad():
        seq = model.prepare(batch, with_targets=True)
        out = model.llm(
            inputs_embeds=seq.embeds, attention_mask=seq.attention_mask, position_ids=seq.position_ids
        )
    return out.logits


@pytest.fixture(scope="module")
def trained(tokenizer, tmp_path_factory):
    """A model with random frozen parts, trained-looking adapters, saved once as a directory."""
    torch.manual_seed(0)
    model = perturb(AVSRModel(model_cfg(), tokenizer=tokenizer))
    path = tmp_path_factory.mktemp("dirs") / "model"
    exp = ExperimentConfig(model=model.cfg)
    save_model_dir(
        model,
        exp,
        path,
        results={
            "evaluation": {
                "label": "av",
                "split": "test",
                "by_snr": {"clean": {"wer": 0.25, "cer": 0.1, "wer_ref": 8}},
            }
        },
    )
    return model, path


@pytest.fixture(scope="module")
def batch(tokenizer):
    return Collator(tokenizer, ["audio", "video"])(samples())


def test_save_load_gives_identical_outputs(trained, batch, tokenizer):
    model, path = trained
    assert {p.name for p in path.iterdir()} >= {CONFIG, WEIGHTS, FROZEN, "README.md", "results.json"}
    loaded, exp = load_model_dir(path)
    assert exp.model == model.cfg
    with torch.no_grad():
        assert torch.equal(model(batch).loss, loaded(batch).loss)
    assert torch.equal(logits(model, batch), logits(loaded, batch))
    gen = Collator(tokenizer, ["audio", "video"], with_targets=False)(samples())
    assert generate(model, gen, OPTS) == generate(loaded, gen, OPTS)
    # the directory holds no pickles: only JSON, markdown and safetensors
    assert {p.suffix for p in path.iterdir()} <= {".json", ".md", ".safetensors"}
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in [path, *path.iterdir()])  # readable by others


def test_model_card_shows_configuration_and_results(trained):
    _, path = trained
    card = (path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: llama-avsr")
    assert "stream `video`: encoder `avhubert`" in card and "LayerNorm" in card
    assert "LoRA on q_proj, v_proj: reduction 8, alpha 4, scaling 0.5" in card
    assert "| clean | 25.00 | 10.00 | 8 |" in card
    assert "trainable" in card


def test_update_results_refreshes_card_and_skips_non_model_dirs(trained, tmp_path):
    _, path = trained
    copy = tmp_path / "m"
    shutil.copytree(path, copy)
    update_results(
        copy, {"evaluation": {"label": "av", "split": "test", "by_snr": {"0": {"wer": 0.5, "cer": 0.2}}}}
    )
    assert "| 0 | 50.00 | 20.00 |" in (copy / "README.md").read_text()
    assert json.loads((copy / "results.json").read_text())["evaluation"]["by_snr"]["0"]["wer"] == 0.5
    update_results(tmp_path / "owner" / "repo", {"x": 1})  # e.g. eval output of a hub model: no crash
    assert not (tmp_path / "owner" / "repo" / "results.json").exists()


def test_save_pretrained_from_pretrained(trained, batch, tmp_path):
    model, _ = trained
    save_pretrained(model, tmp_path / "p")
    loaded, exp = from_pretrained(tmp_path / "p")
    assert exp.train == ExperimentConfig(model=model.cfg).train
    assert torch.equal(logits(model, batch), logits(loaded, batch))


def test_merged_export_needs_no_peft_and_gives_same_transcripts(trained, batch, tokenizer, tmp_path):
    from peft import PeftModel

    model, path = trained
    out = export_merged(path, tmp_path / "merged")
    assert (out / "llm" / "config.json").is_file() and list((out / "llm").glob("*.safetensors"))
    cfg = json.loads((out / CONFIG).read_text())["model"]["llm"]
    assert cfg["lora"] is None and cfg["source"] == "./llm" and cfg["tokenizer"] is None
    merged, exp = load_model_dir(out)
    assert not isinstance(merged.llm, PeftModel)
    assert not any("lora" in n for n, _ in merged.llm.named_parameters())
    assert "merged" in (out / "README.md").read_text()
    torch.testing.assert_close(logits(merged, batch), logits(model, batch), atol=1e-4, rtol=1e-4)
    gen = Collator(tokenizer, ["audio", "video"], with_targets=False)(samples())
    assert generate(merged, gen, OPTS) == generate(model, gen, OPTS)
    with pytest.raises(ModelDirError, match="nothing to merge"):
        export_merged(out, tmp_path / "again")


def test_export_command_merges_and_copies(trained, tmp_path):
    from llama_avsr.cli import main

    _, path = trained
    assert main(["export", "--model", str(path), "--merge-lora", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "llm" / "config.json").is_file()
    assert (
        main(["export", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "copy")]) == 0
    )  # plain copy
    assert json.loads((tmp_path / "copy" / "provenance.json").read_text())["merged_from"] == str(path)
    assert (tmp_path / "copy" / "results.json").is_file()
    assert load_experiment(tmp_path / "copy").model.llm.source == str((tmp_path / "copy" / "llm").resolve())
    assert main(["export", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 1


# ------------------------------------------------------------------------------------------------
# sharing through the hub, offline: uploads land in a local hub cache that snapshot_download reads


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """``HfApi.create_repo`` / ``upload_folder`` write into a hub cache in tmp_path (as if the files had
    been pushed, then downloaded); ``HF_HUB_OFFLINE=1`` makes ``snapshot_download`` read that cache."""
    import hashlib

    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import filter_repo_objects

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    created = []

    def create_repo(self, repo_id, **kw):
        created.append((repo_id, kw.get("private")))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kw):
        folder = Path(folder_path)
        files = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
        files = list(filter_repo_objects(files, ignore_patterns=ignore_patterns))
        sha = hashlib.sha1("".join(sorted(files)).encode()).hexdigest()
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        for f in files:
            dst = repo / "snapshots" / sha / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / f, dst)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(sha)
        return f"https://huggingface.co/{repo_id}/commit/{sha}"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return cache, created


def test_push_to_hub_then_load_by_repo_id(trained, batch, local_hub, tokenizer):
    cache, created = local_hub
    model, path = trained
    (path / "eval").mkdir(exist_ok=True)
    (path / "eval" / "big.jsonl").write_text("{}\n")
    url = push_to_hub(path, "tester/tiny-avsr", private=True)
    assert url.startswith("https://huggingface.co/tester/tiny-avsr/commit/")
    assert created == [("tester/tiny-avsr", True)]
    snapshot = next((cache / "models--tester--tiny-avsr" / "snapshots").iterdir())
    assert (snapshot / WEIGHTS).is_file() and not (snapshot / "eval").exists()
    loaded, _ = from_pretrained("tester/tiny-avsr")
    assert torch.equal(logits(model, batch), logits(loaded, batch))
    with pytest.raises(ModelDirError, match="cannot be fetched"):
        load_model_dir("tester/not-there")


def test_push_merged_export_through_cli(trained, local_hub, tmp_path):
    from llama_avsr.cli import main

    cache, _ = local_hub
    _, path = trained
    assert main(["export", "--model", str(path), "--merge-lora", "--push-to-hub", "tester/merged"]) == 0
    merged, exp = load_model_dir("tester/merged")  # ./llm resolves inside the downloaded snapshot
    assert exp.model.llm.source.startswith(str(cache.resolve()))


# ------------------------------------------------------------------------------------------------
# errors


def test_broken_directories_get_clear_errors(trained, tmp_path):
    _, path = trained

    def copy(name):
        d = tmp_path / name
        shutil.copytree(path, d)
        return d

    with pytest.raises(ModelDirError, match="no such model directory"):
        load_model_dir(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelDirError, match="not a model directory"):
        load_model_dir(empty)
    d = copy("no-weights")
    (d / WEIGHTS).unlink()
    with pytest.raises(ModelDirError, match="no trainable.safetensors"):
        load_model_dir(d)
    d = copy("no-frozen")
    (d / FROZEN).unlink()
    with pytest.raises(ModelDirError, match="random weights"):
        load_model_dir(d)
    d = copy("bad-weights")
    (d / WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(ModelDirError, match="not a readable"):
        load_model_dir(d)
    d = copy("bad-config")
    (d / CONFIG).write_text(json.dumps({"model": {"encoders": {}, "streams": {}}}))
    with pytest.raises(ModelDirError, match="invalid configuration"):
        load_model_dir(d)
    d = copy("other-recipe")  # a config of another recipe: stack 4 instead of 3
    other = ExperimentConfig(model=model_cfg(ratio=4))
    (d / CONFIG).write_text(json.dumps(other.to_dict()))
    with pytest.raises(ModelDirError, match="shape mismatch"):
        load_model_dir(d)


def test_save_refuses_to_replace_a_non_model_directory(trained, tmp_path):
    model, _ = trained
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(ModelDirError, match="refusing"):
        save_pretrained(model, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "precious"


def _state(model: AVSRModel, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.trainable_state_dict().items() if k.startswith(prefix)}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_init_from_copies_the_named_parts_and_nothing_else(trained, tokenizer):
    source, path = trained
    torch.manual_seed(0)  # the tiny models' frozen weights are random: the source's seed
    model = AVSRModel(model_cfg(), tokenizer=tokenizer)
    before = {p: _state(model, p) for p in ("projectors.audio.", "llm.", "encoders.avhubert.")}
    copied = init_from_model_dirs(model, {"video": str(path)})
    # the video stream: its projector and its encoder's trained (LoRA) weights come from the source
    assert _same(_state(model, "projectors.video."), _state(source, "projectors.video."))
    assert _same(_state(model, "encoders.avhubert."), _state(source, "encoders.avhubert."))
    assert not _same(before["encoders.avhubert."], _state(source, "encoders.avhubert."))
    # the other parts keep their initialisation
    assert _same(_state(model, "projectors.audio."), before["projectors.audio."])
    assert _same(_state(model, "llm."), before["llm."])
    assert copied["video"] == len(_state(source, "projectors.video.")) + len(
        _state(source, "encoders.avhubert.")
    )
    init_from_model_dirs(model, {"llm": str(path), "audio": str(path)})
    assert _same(_state(model, "llm."), _state(source, "llm."))
    assert _same(model.trainable_state_dict(), source.trainable_state_dict())


def test_init_from_a_model_with_other_streams_and_encoder_names(trained, tokenizer, tmp_path):
    """A VSR model (the video stream alone, its encoder under another name) starts from the AV model."""
    source, path = trained
    d = dataclasses.asdict(model_cfg())
    d["encoders"] = {"lips": d["encoders"]["avhubert"]}
    d["streams"] = {"video": {**d["streams"]["video"], "encoder": "lips"}}
    model = AVSRModel(from_dict(ModelConfig, d), tokenizer=tokenizer)
    # the same random frozen LLM and lip encoder as the source's (built differently, the seed alone
    # does not give them)
    with torch.no_grad():
        theirs_frozen = dict(source.named_parameters())
        for k, p in model.named_parameters():
            if not p.requires_grad:
                p.copy_(theirs_frozen[k.replace("encoders.lips.", "encoders.avhubert.")])
    init_from_model_dirs(model, {"video": str(path)})
    ours = _state(model, "encoders.lips.")
    theirs = _state(source, "encoders.avhubert.")
    assert ours and _same(
        {k.replace("encoders.lips.", "encoders.avhubert."): v for k, v in ours.items()}, theirs
    )
    assert _same(_state(model, "projectors.video."), _state(source, "projectors.video."))


def test_init_from_refuses_parts_trained_on_other_random_frozen_weights(trained, tokenizer):
    """A projector or LoRA trained against a random frozen LLM or encoder means nothing on another one."""
    _, path = trained
    torch.manual_seed(5)
    model = AVSRModel(model_cfg(), tokenizer=tokenizer)
    with pytest.raises(ModelDirError, match=r"llm has random frozen weights \(source: null\) that differ"):
        init_from_model_dirs(model, {"video": str(path)})


def test_init_from_refuses_parts_built_differently(trained, tokenizer, tmp_path):
    _, path = trained
    model = AVSRModel(model_cfg(ratio=4), tokenizer=tokenizer)
    before = model.trainable_state_dict()
    before = {k: v.clone() for k, v in before.items()}
    with pytest.raises(
        ModelDirError, match=r"stream 'audio' is built differently \(compression.ratio: 3 there, 4 here"
    ):
        init_from_model_dirs(model, {"audio": str(path)})
    assert _same(model.trainable_state_dict(), before)  # nothing copied
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="not a model directory"):
        init_from_model_dirs(model, {"video": str(tmp_path / "empty")})
    other = AVSRModel(
        from_dict(
            ModelConfig,
            av_model_dict(
                {"kind": "stack", "ratio": 3},
                {"kind": "stack", "ratio": 2},
                {"reduction": 4, "alpha": 4},
                video_layernorm=True,
            ),
        ),
        tokenizer=tokenizer,
    )
    with pytest.raises(
        ModelDirError,
        match=r"train.init_from.llm: .* its LLM differs from this model's \(lora.reduction: 8 there, 4 here",
    ):
        init_from_model_dirs(other, {"llm": str(path)})


def test_init_from_names_parts_of_the_model(trained):
    _, path = trained
    base = {"model": dataclasses.asdict(model_cfg())}
    ok = ExperimentConfig.from_dict({**base, "train": {"init_from": {"video": str(path), "llm": str(path)}}})
    assert ok.train.init_from == {"video": str(path), "llm": str(path)}
    with pytest.raises(ConfigError, match=r"train.init_from: \['lips'\] are not parts of the model"):
        ExperimentConfig.from_dict({**base, "train": {"init_from": {"lips": str(path)}}})
    with pytest.raises(ConfigError, match=r"train.init_from.llm: the LLM has no LoRA weights"):
        no_lora = {**base["model"], "llm": {**base["model"]["llm"], "lora": None}}
        ExperimentConfig.from_dict({"model": no_lora, "train": {"init_from": {"llm": str(path)}}})
