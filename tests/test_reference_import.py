"""Import of released Llama-AVSR checkpoints: a synthetic checkpoint in the reference key layout, built
here from tiny base models, against the reference's LoRA math re-implemented in plain torch."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, LlamaForCausalLM, WhisperConfig, WhisperModel

from llama_avsr.config import EncoderConfig, find_arch
from llama_avsr.data.collate import Collator
from llama_avsr.decoding.options import DecodingOptions
from llama_avsr.decoding.search import generate
from llama_avsr.model_dir import load_model_dir
from llama_avsr.models.avsr import AVSRModel
from llama_avsr.models.encoders import build_encoder
from llama_avsr.models.encoders.avhubert import AVHubert
from llama_avsr.models.llm import load_tokenizer
from llama_avsr.reference import (
    ReferenceCheckpointError,
    import_reference,
    read_reference_checkpoint,
)
from llama_avsr.training.config import ExperimentConfig

HIDDEN = 64
REDUCTION, ALPHA = 8, 4  # r = 64 / 8 = 8, scaling = alpha / reduction = 0.5
AVH_RANK, AVH_SCALE = 2, 2.0  # AV-HuBERT LoRA: round(32 / 16), scale 2 (reference constants)
RATIO = {"audio": 3, "video": 2}
TEXT = "hello world"
PROMPT = "Transcribe speech and video to text."


# ------------------------------------------------------------------------------------------------
# the reference model, independently: HF Llama with q/v replaced by plain-torch LoRA linears


class RefLoRALinear(nn.Module):
    """The reference's LoRA: ``W x + up(down(x)) * scaling`` (no PEFT)."""

    def __init__(self, base: nn.Linear, down: torch.Tensor, up: torch.Tensor, scaling: float) -> None:
        super().__init__()
        self.base, self.down, self.up, self.scaling = base, down, up, scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.down), self.up) * self.scaling


def add_ref_lora(attn: nn.Module, state: dict, prefix: str, scaling: float) -> None:
    for t in ("q", "v"):
        base = getattr(attn, f"{t}_proj")
        down = state[f"{prefix}.lora_down_{t.upper()}.weight"]
        up = state[f"{prefix}.lora_up_{t.upper()}.weight"]
        setattr(attn, f"{t}_proj", RefLoRALinear(base, down, up, scaling))


def stack(feats: torch.Tensor, k: int) -> torch.Tensor:
    """(1, T, D) → (1, T // k, D·k): the reference drops the remainder frames."""
    t = feats.shape[1] // k * k
    return feats[:, :t].reshape(1, t // k, -1)


def ref_projector(state: dict, name: str) -> nn.Sequential:
    w0, w2 = state[f"{name}_proj.0.weight"], state[f"{name}_proj.2.weight"]
    layers = [nn.Linear(w0.shape[1], w0.shape[0]), nn.ReLU(), nn.Linear(w2.shape[1], w2.shape[0])]
    if f"{name}_proj.3.weight" in state:
        layers.append(nn.LayerNorm(w2.shape[0]))
    proj = nn.Sequential(*layers)
    proj.load_state_dict({k[len(name) + 6 :]: v for k, v in state.items() if k.startswith(f"{name}_proj.")})
    return proj.eval()


# ------------------------------------------------------------------------------------------------
# tiny base models on disk (what a recipe names) and a synthetic released checkpoint


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    torch.manual_seed(0)
    llm = LlamaForCausalLM(AutoConfig.for_model(**json.loads(find_arch("tiny-llama").read_text())))
    llm.save_pretrained(root / "llm")
    ids = dict.fromkeys(["pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"], 0)
    whisper = WhisperModel(WhisperConfig(**json.loads(find_arch("tiny-whisper").read_text()), **ids))
    whisper.save_pretrained(root / "whisper")
    avh_cfg = {**json.loads(find_arch("tiny-avhubert").read_text()), "_name": "av_hubert"}
    avh = AVHubert.from_config(avh_cfg)
    torch.save({"cfg": {"model": avh_cfg}, "model": avh.state_dict()}, root / "avhubert.pt")
    return root


def recipe(bases: Path, **llm_lora) -> ExperimentConfig:
    return ExperimentConfig.from_dict(
        {
            "model": {
                "encoders": {
                    "whisper": {
                        "kind": "whisper",
                        "source": str(bases / "whisper"),
                        "options": {"pad_to_30s": False},
                    },
                    "avhubert": {
                        "kind": "avhubert",
                        "source": str(bases / "avhubert.pt"),
                        "options": {"lora": True},
                    },
                },
                "streams": {
                    m: {
                        "encoder": enc,
                        "inputs": [m],
                        "compression": {"kind": "stack", "ratio": RATIO[m]},
                        "projector": {"hidden": 32, "layernorm": m == "video"},
                        "begin_token": f"<{m}>",
                        "end_token": f"</{m}>",
                    }
                    for m, enc in (("audio", "whisper"), ("video", "avhubert"))
                },
                "llm": {
                    "source": str(bases / "llm"),
                    "tokenizer": "smollm2-135m",
                    "lora": {"reduction": REDUCTION, "alpha": ALPHA, **llm_lora},
                },
            },
            "decode": {"num_beams": 3, "max_new_tokens": 6},
        }
    )


class Reference:
    """The reference model rebuilt from its checkpoint with the plain-torch LoRA above."""

    def __init__(self, bases: Path, state: dict, tokenizer) -> None:
        self.tok = tokenizer
        llm = LlamaForCausalLM.from_pretrained(bases / "llm")
        llm.resize_token_embeddings(len(tokenizer))
        llm.load_state_dict(
            {k[4:]: v for k, v in state.items() if k.startswith("llm.") and ".lora_" not in k}
        )
        for i, layer in enumerate(llm.model.layers):
            add_ref_lora(layer.self_attn, state, f"llm.model.layers.{i}.self_attn", ALPHA / REDUCTION)
        self.llm = llm.eval()
        self.audio = build_encoder(
            EncoderConfig(kind="whisper", source=str(bases / "whisper"), options={"pad_to_30s": False})
        ).eval()
        video = build_encoder(EncoderConfig(kind="avhubert", source=str(bases / "avhubert.pt"))).eval()
        avh = {k[len("video_encoder.") :]: v for k, v in state.items() if k.startswith("video_encoder.")}
        video.model.load_state_dict({k: v for k, v in avh.items() if ".lora_" not in k})
        for i, layer in enumerate(video.model.encoder.layers):
            add_ref_lora(layer.self_attn, avh, f"encoder.layers.{i}.self_attn", AVH_SCALE)
        self.video = video
        self.proj = {m: ref_projector(state, m) for m in ("audio", "video")}

    @torch.no_grad()
    def logits(self, audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        ids = lambda t: torch.tensor(self.tok.convert_tokens_to_ids(t))  # noqa: E731
        emb = self.llm.get_input_embeddings()
        a, _ = self.audio({"audio": audio[None]}, {"audio": torch.tensor([len(audio)])})
        v, _ = self.video({"video": video[None]}, {"video": torch.tensor([len(video)])})
        parts = [emb(torch.tensor([self.tok.bos_token_id]))]
        for m, feats in (("audio", a), ("video", v)):
            parts += [emb(ids([f"<{m}>"])), self.proj[m](stack(feats, RATIO[m]))[0], emb(ids([f"</{m}>"]))]
        text = self.tok(PROMPT, add_special_tokens=False)["input_ids"]
        text += self.tok(TEXT, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        parts.append(emb(torch.tensor(text)))
        return self.llm(inputs_embeds=torch.cat(parts)[None]).logits


def synthetic_checkpoint(bases: Path, tokenizer, perturb_base: bool = True) -> dict[str, torch.Tensor]:
    """What the reference's ``model.state_dict()`` holds after training: frozen base weights, resized
    embeddings with its own rows for the added tokens, LoRA, projectors, drifted BatchNorm statistics."""
    g = torch.Generator().manual_seed(42)
    rnd = lambda *shape, s=0.05: s * torch.randn(*shape, generator=g)  # noqa: E731
    state: dict[str, torch.Tensor] = {}
    llm = LlamaForCausalLM.from_pretrained(bases / "llm")
    n_base = llm.get_input_embeddings().weight.shape[0]
    llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():  # the reference's rows for <pad>, <audio>, … (not the base model's)
        llm.get_input_embeddings().weight[n_base:] = rnd(len(tokenizer) - n_base, HIDDEN, s=0.5)
    state.update({f"llm.{k}": v.clone() for k, v in llm.state_dict().items()})
    r, v_out = HIDDEN // REDUCTION, llm.config.num_key_value_heads * HIDDEN // llm.config.num_attention_heads
    for i in range(llm.config.num_hidden_layers):
        p = f"llm.model.layers.{i}.self_attn"
        state.update(
            {
                f"{p}.lora_down_Q.weight": rnd(r, HIDDEN),
                f"{p}.lora_up_Q.weight": rnd(HIDDEN, r),
                f"{p}.lora_down_V.weight": rnd(r, HIDDEN),
                f"{p}.lora_up_V.weight": rnd(v_out, r),  # GQA: v is narrower
            }
        )
    whisper = WhisperModel.from_pretrained(bases / "whisper").get_encoder()
    state.update({f"audio_encoder.{k}": v.clone() for k, v in whisper.state_dict().items()})
    avh = torch.load(bases / "avhubert.pt", weights_only=True)["model"]
    for k, v in avh.items():
        drift = ("running_mean" in k or "running_var" in k) and v.is_floating_point()
        state[f"video_encoder.{k}"] = v + rnd(*v.shape).abs() if drift else v.clone()
    d = 32
    for i in range(2):
        p = f"video_encoder.encoder.layers.{i}.self_attn"
        for t in ("Q", "V"):
            state[f"{p}.lora_down_{t}.weight"] = rnd(AVH_RANK, d, s=0.2)
            state[f"{p}.lora_up_{t}.weight"] = rnd(d, AVH_RANK, s=0.2)
    for m, dim, k in (("audio", 64, 3), ("video", 32, 2)):
        state.update(
            {
                f"{m}_proj.0.weight": rnd(32, dim * k, s=0.2),
                f"{m}_proj.0.bias": rnd(32),
                f"{m}_proj.2.weight": rnd(HIDDEN, 32, s=0.2),
                f"{m}_proj.2.bias": rnd(HIDDEN),
            }
        )
    state.update({"video_proj.3.weight": 1 + rnd(HIDDEN), "video_proj.3.bias": rnd(HIDDEN)})
    return state


@pytest.fixture(scope="module")
def checkpoint(bases, tokenizer):
    state = synthetic_checkpoint(bases, tokenizer)
    path = bases / "model_avg_4.pth"
    torch.save(state, path)
    return path, state


def inputs():
    g = torch.Generator().manual_seed(3)
    return 0.1 * torch.randn(16000, generator=g), torch.randn(8, 1, 48, 48, generator=g)


def our_logits(model: AVSRModel, tokenizer, audio, video) -> torch.Tensor:
    batch = Collator(tokenizer, ["audio", "video"])(
        [{"id": "0", "text": TEXT, "audio": audio, "video": video}]
    )
    with torch.no_grad():
        seq = model.prepare(batch, with_targets=True)
        return model.llm(
            inputs_embeds=seq.embeds, attention_mask=seq.attention_mask, position_ids=seq.position_ids
        ).logits


@pytest.fixture(scope="module")
def imported(bases, checkpoint, tokenizer, tmp_path_factory):
    path, _ = checkpoint
    out = tmp_path_factory.mktemp("imported") / "model"
    exp = recipe(bases)
    model, report = import_reference(path, exp, out, model=AVSRModel(exp.model, tokenizer=tokenizer))
    return model, report, out


# ------------------------------------------------------------------------------------------------
# import


def test_imported_model_gives_the_reference_logits(bases, checkpoint, imported, tokenizer):
    _, state = checkpoint
    model, report, out = imported
    audio, video = inputs()
    ref = Reference(bases, state, tokenizer).logits(audio, video)
    ours = our_logits(model, tokenizer, audio, video)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    # and through the written model directory
    loaded, _ = load_model_dir(out)
    torch.testing.assert_close(our_logits(loaded, tokenizer, audio, video), ref, atol=1e-4, rtol=1e-4)
    # every trainable tensor came from the checkpoint: 2 layers × 4 LLM LoRA, 2 × 4 AV-HuBERT LoRA, 4 + 6 projector
    assert len(report.trainable) == len(model.trainable_state_dict()) == 8 + 8 + 10
    assert report.added_token_rows == 5 and report.buffers_differing > 0
    assert report.ignored and not report.base_differing
    assert "Imported from the released Llama-AVSR checkpoint" in (out / "README.md").read_text()


def test_peft_scaling_equals_reference_scaling(imported):
    model, _, _ = imported
    q = model.llm.get_base_model().model.layers[0].self_attn.q_proj
    assert q.r["default"] == HIDDEN // REDUCTION
    assert math.isclose(q.scaling["default"], ALPHA / REDUCTION)


def test_frozen_base_weights_in_the_file_are_ignored_and_reported(bases, checkpoint, tokenizer, tmp_path):
    _, state = checkpoint
    changed = dict(state)
    key = "llm.model.layers.0.mlp.up_proj.weight"
    changed[key] = state[key] + 1.0  # a checkpoint trained on another base model
    torch.save(changed, tmp_path / "other_base.pth")
    exp = recipe(bases)
    model, report = import_reference(
        tmp_path / "other_base.pth", exp, tmp_path / "out", model=AVSRModel(exp.model, tokenizer=tokenizer)
    )
    assert report.base_differing == [key] and "another base model" in report.summary()
    audio, video = inputs()
    ref = Reference(bases, state, tokenizer).logits(audio, video)  # the named base's weights are used
    torch.testing.assert_close(our_logits(model, tokenizer, audio, video), ref, atol=1e-4, rtol=1e-4)


def test_merged_export_of_an_imported_model(imported, tokenizer, tmp_path):
    from llama_avsr.model_dir import export_merged

    model, _, out = imported
    merged, exp = load_model_dir(export_merged(out, tmp_path / "merged"))
    audio, video = inputs()
    torch.testing.assert_close(
        our_logits(merged, tokenizer, audio, video),
        our_logits(model, tokenizer, audio, video),
        atol=1e-4,
        rtol=1e-4,
    )
    batch = Collator(tokenizer, ["audio", "video"], with_targets=False)(
        [{"id": "0", "text": "", "audio": audio, "video": video}]
    )
    opts = DecodingOptions(num_beams=3, max_new_tokens=6)
    assert generate(merged, batch, opts) == generate(model, batch, opts)


def test_lightning_checkpoint_is_accepted(checkpoint, tmp_path):
    path, state = checkpoint
    import argparse

    wrapped = {
        "state_dict": {f"model.{k}": v for k, v in state.items()},
        "hyper_parameters": argparse.Namespace(lr=1e-3),
    }
    torch.save(wrapped, tmp_path / "epoch=9.ckpt")
    assert read_reference_checkpoint(tmp_path / "epoch=9.ckpt").keys() == state.keys()


def test_import_reference_command(bases, checkpoint, tmp_path, capsys):
    from llama_avsr.cli import main

    path, _ = checkpoint
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(json.dumps(recipe(bases).to_dict()))  # JSON is YAML
    assert main(["import-reference", str(path), "--config", str(cfg), "--out", str(tmp_path / "m")]) == 0
    assert "imported 26 trainable tensors" in capsys.readouterr().out
    assert (tmp_path / "m" / "trainable.safetensors").is_file()
    bad = [
        "import-reference",
        str(path),
        "--out",
        str(tmp_path / "x"),
        "--config",
        str(cfg),
        "model.llm.lora.reduction=16",
    ]
    assert main(bad) == 1
    assert "reduction_lora = 8" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# files that are not such checkpoints, or do not match the recipe


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_unreadable_files_get_clear_errors(checkpoint, tmp_path):
    path, _ = checkpoint
    data = path.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReferenceCheckpointError, match="truncated, corrupt or another format"):
        read_reference_checkpoint(tmp_path / "truncated.pth")
    torch.save({"llm.x": torch.zeros(1), "evil": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ReferenceCheckpointError, match="refusing to unpickle.*posix.getcwd"):
        read_reference_checkpoint(tmp_path / "evil.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ReferenceCheckpointError, match="cannot read"):
        read_reference_checkpoint(tmp_path / "text.pth")
    torch.save({"encoder.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ReferenceCheckpointError, match="not a Llama-AVSR checkpoint"):
        read_reference_checkpoint(tmp_path / "other.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ReferenceCheckpointError, match="not a state dict"):
        read_reference_checkpoint(tmp_path / "list.pth")
    with pytest.raises(ReferenceCheckpointError, match="no such checkpoint"):
        read_reference_checkpoint(tmp_path / "missing.pth")


def _edit(state, drop=(), **replace):
    out = {k: v for k, v in state.items() if k not in drop}
    out.update({k.replace("__", "."): v for k, v in replace.items()})
    return out


MISMATCHES = {
    "missing LoRA": (
        lambda s: _edit(s, drop=["llm.model.layers.1.self_attn.lora_up_V.weight"]),
        {},
        "missing in the checkpoint.*lora_up_V",
    ),
    "missing AV-HuBERT LoRA": (
        lambda s: _edit(s, drop=["video_encoder.encoder.layers.0.self_attn.lora_down_Q.weight"]),
        {},
        "missing in the checkpoint.*video_encoder.encoder.layers.0.self_attn.lora_down_Q",
    ),
    "projector shape": (
        lambda s: {**s, "audio_proj.0.weight": torch.zeros(32, 64 * 4)},
        {},
        r"shape mismatch.*audio_proj.0.weight: checkpoint \(32, 256\) vs recipe \(32, 192\)",
    ),
    "LoRA rank": (lambda s: s, {"reduction": 16}, "r = 8, the recipe gives r = 4.*reduction_lora = 8"),
    "LoRA rank override": (lambda s: s, {"rank": 4}, "rank = 4 overrides"),
    "LoRA targets": (lambda s: s, {"targets": ["q_proj", "k_proj", "v_proj"]}, "q_proj and v_proj only"),
    "vocabulary": (
        lambda s: {**s, "llm.model.embed_tokens.weight": s["llm.model.embed_tokens.weight"][:-1]},
        {},
        "embed_tokens.weight has shape.*another base model",
    ),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_checkpoints_that_do_not_match_the_recipe(case, bases, checkpoint, tokenizer, tmp_path):
    from llama_avsr.reference import load_reference_state

    edit, lora, message = MISMATCHES[case]
    exp = recipe(bases, **lora)
    model = AVSRModel(exp.model, tokenizer=tokenizer)
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    with pytest.raises(ReferenceCheckpointError, match=message):
        load_reference_state(model, edit(checkpoint[1]), source="ckpt")
    after = model.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-loaded


def test_checkpoint_of_another_recipe(bases, checkpoint, tokenizer):
    """An AVSR checkpoint against a VSR recipe (no audio stream), and against one without AV-HuBERT LoRA."""
    from llama_avsr.reference import load_reference_state

    _, state = checkpoint
    data = recipe(bases).to_dict()
    del data["model"]["streams"]["audio"], data["model"]["encoders"]["whisper"]
    vsr = ExperimentConfig.from_dict(data)
    with pytest.raises(ReferenceCheckpointError, match="no place in the recipe.*audio_proj"):
        load_reference_state(AVSRModel(vsr.model, tokenizer=tokenizer), state)
    data = recipe(bases).to_dict()
    data["model"]["encoders"]["avhubert"]["options"] = {}
    no_lora = ExperimentConfig.from_dict(data)
    with pytest.raises(ReferenceCheckpointError, match="lora: true"):
        load_reference_state(AVSRModel(no_lora.model, tokenizer=tokenizer), state)
    data = recipe(bases).to_dict()
    data["model"]["llm"]["lora"] = None
    with pytest.raises(ReferenceCheckpointError, match="llm.lora: null"):
        load_reference_state(AVSRModel(ExperimentConfig.from_dict(data).model, tokenizer=tokenizer), state)
