"""One model for ASR, VSR and AVSR at several compression rates (Omni-AVSR / Llama-MTSK) on tiny random
configs: config checks, per-rate projectors, LoRA strategies, the training plan and objective, decoding
every task × rate, one model directory, the paper recipe's parameter count."""

from __future__ import annotations

import random

import pytest
import torch
from tiny_av import av_model_dict

from llama_avsr.cli import main
from llama_avsr.config import ConfigError, ModelConfig, from_dict
from llama_avsr.data.collate import Collator
from llama_avsr.decoding.options import DecodingOptions
from llama_avsr.decoding.search import decode, parse_rates
from llama_avsr.experiment import ExperimentConfig
from llama_avsr.model_dir import load_model_dir, save_model_dir
from llama_avsr.models.avsr import AVSRModel
from llama_avsr.models.llm import load_tokenizer
from llama_avsr.training.objective import objective, plan

TEXTS = ["hello world", "the cat sat", "hi there", "good morning"]
OPTS = DecodingOptions(num_beams=2, max_new_tokens=4)


def omni_cfg(
    strategy: str = "shared+specific", specific_to: str = "task", tasks=("asr", "vsr", "avsr"), **audio
):
    return av_model_dict(
        {"kind": "stack", "ratios": [2, 4], **audio},
        {"kind": "stack", "ratios": [1, 2]},
        {"reduction": 8, "alpha": 4, "strategy": strategy, "specific_to": specific_to},
        tasks=list(tasks) if tasks is not None else None,
    )


def build(**kw) -> ModelConfig:
    return from_dict(ModelConfig, omni_cfg(**kw))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def batch(tokenizer):
    g = torch.Generator().manual_seed(0)
    items = [
        {
            "id": str(i),
            "text": t,
            "audio": 0.1 * torch.randn(640 * f, generator=g),
            "video": torch.randn(f, 1, 48, 48, generator=g),
        }
        for i, (t, f) in enumerate(zip(TEXTS, [20, 16, 12, 18], strict=True))
    ]
    return Collator(tokenizer, ["audio", "video"])(items)


@pytest.fixture(scope="module")
def model(tokenizer):
    """A multi-task, multi-rate model with shared + task-specific LoRA and trained-looking weights."""
    torch.manual_seed(0)
    m = AVSRModel(build(), tokenizer=tokenizer)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m.eval()


# -- configuration ------------------------------------------------------------------------------


def test_ratios_default_rate_and_clear_errors():
    cfg = build()
    assert cfg.streams["audio"].compression.ratio == 2 and cfg.streams["audio"].compression.rates == [2, 4]
    assert cfg.rate_combinations("avsr") == [
        {"audio": 2, "video": 1},
        {"audio": 2, "video": 2},
        {"audio": 4, "video": 1},
        {"audio": 4, "video": 2},
    ]
    assert cfg.rate_combinations("asr") == [{"audio": 2}, {"audio": 4}]
    assert cfg.task_streams("vsr") == ["video"] and cfg.default_task == "avsr"
    assert cfg.prompt_for("vsr") == "Transcribe video to text."
    assert cfg.check_rates({"audio": 4}, "avsr") == {"audio": 4, "video": 1}
    with pytest.raises(ValueError, match=r"trained at rates \[2, 4\], not 16"):
        cfg.check_rates({"audio": 16})
    with pytest.raises(ValueError, match="unknown stream 'audi'"):
        cfg.check_rates({"audi": 4})
    with pytest.raises(ValueError, match="ratio 3 is not one of ratios"):
        build(ratio=3)
    with pytest.raises(ValueError, match="avg-pool"):
        from_dict(ModelConfig, {**omni_cfg(), "streams": {**omni_cfg()["streams"], "audio": {
            **omni_cfg()["streams"]["audio"], "projector": {"hidden": 32, "shared_across_rates": True}}}})  # fmt: skip
    with pytest.raises(ValueError, match="needs several model.tasks"):
        build(strategy="specific", tasks=["avsr"])
    with pytest.raises(ValueError, match="unknown task 'asrr'"):
        build(tasks=["asrr"])
    with pytest.raises(ConfigError, match="task_weights"):
        ExperimentConfig.from_dict({"model": omni_cfg(), "train": {"task_weights": {"lipreading": 1}}})
    assert parse_rates("audio=16,video=5") == {"audio": 16, "video": 5}
    with pytest.raises(ValueError, match="stream=rate"):
        parse_rates("audio:16")


def test_single_rate_single_task_configs_keep_their_layout(tokenizer):
    """Old configs: one projector per stream under its old name, one PEFT adapter named ``default``."""
    cfg = omni_cfg(strategy="shared", tasks=None)
    for s in cfg["streams"].values():
        s["compression"] = {"kind": "stack", "ratio": 2}
    m = AVSRModel(from_dict(ModelConfig, cfg), tokenizer=tokenizer)
    keys = m.trainable_state_dict()
    assert "projectors.audio.0.weight" in keys and "projectors.video.2.weight" in keys
    assert (
        any(".lora_A.default." in k for k in keys) and m.cfg.prompt == "Transcribe speech and video to text."
    )


def test_a_projector_per_rate_or_one_shared_across_rates(tokenizer, model):
    keys = model.trainable_state_dict()
    assert {
        "projectors.audio.x2.0.weight",
        "projectors.audio.x4.0.weight",
        "projectors.video.x1.0.weight",
    } <= set(keys)
    # stack: a projector's input is k frames wide
    assert keys["projectors.audio.x4.0.weight"].shape[1] == 2 * keys["projectors.audio.x2.0.weight"].shape[1]
    shared = AVSRModel(build(kind="avg-pool", strategy="shared"), tokenizer=tokenizer)
    cfg = omni_cfg(kind="avg-pool", strategy="shared")
    cfg["streams"]["audio"]["projector"]["shared_across_rates"] = True
    one = AVSRModel(from_dict(ModelConfig, cfg), tokenizer=tokenizer)
    assert "projectors.audio.0.weight" in one.trainable_state_dict()
    assert "projectors.audio.x2.0.weight" in shared.trainable_state_dict()


@pytest.mark.parametrize(
    ("strategy", "specific_to", "adapters"),
    [
        ("shared", "task", ["default"]),
        ("specific", "task", ["asr", "vsr", "avsr"]),
        ("shared+specific", "task", ["default", "asr", "vsr", "avsr"]),
        ("specific", "rates", ["audio2", "audio4", "video1", "video2", "audio2_video1", "audio2_video2",
                               "audio4_video1", "audio4_video2"]),
    ],
)  # fmt: skip
def test_lora_strategies_hold_their_adapters(strategy, specific_to, adapters):
    cfg = build(strategy=strategy, specific_to=specific_to)
    assert cfg.all_adapters() == adapters
    m = AVSRModel(cfg, meta=True)
    lora = sum(p.numel() for n, p in m.named_parameters() if "lora_" in n and "encoders" not in n)
    one = AVSRModel(build(strategy="shared"), meta=True)
    one_lora = sum(p.numel() for n, p in one.named_parameters() if "lora_" in n and "encoders" not in n)
    assert lora == len(adapters) * one_lora  # every adapter the size of the shared one


# -- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task_sampling", ["batch", "utterance", "all"])
@pytest.mark.parametrize("rate_sampling", ["all", "sample"])
def test_plan_counts_every_row_once(model, task_sampling, rate_sampling):
    for seed in range(5):
        passes = plan(model, 4, task_sampling, rate_sampling, {"vsr": 1.5}, random.Random(seed))
        weight = torch.zeros(4)
        for p in passes:
            weight[list(p.rows) if p.rows is not None else slice(None)] += p.weight
            assert p.rates in model.cfg.rate_combinations(p.task)
        assert torch.allclose(weight, torch.ones(4))
        tasks = {p.task for p in passes}
        if task_sampling == "batch":
            assert len(tasks) == 1
        if task_sampling == "all":
            assert tasks == {"asr", "vsr", "avsr"}
        per_task = {t: sum(p.task == t for p in passes) for t in tasks}
        for t, n in per_task.items():
            groups = len({p.rows for p in passes if p.task == t})
            expected = len(model.cfg.rate_combinations(t)) if rate_sampling == "all" else 1
            assert n == expected * groups


def test_objective_trains_every_projector_and_adapter_of_the_plan(tokenizer, batch):
    torch.manual_seed(0)
    m = AVSRModel(build(), tokenizer=tokenizer).train()
    passes = plan(m, len(batch), "all", "all", None, random.Random(0))
    out = objective(m, batch, passes)
    assert int(out.n_tokens) == int((batch.target_ids != -100).sum()) and torch.isfinite(out.loss)
    out.loss.backward()
    for n, p in m.named_parameters():
        if p.requires_grad and ("projectors" in n or "lora_B" in n):
            assert p.grad is not None and p.grad.abs().sum() > 0, n
    # a single pass is the model's own loss: the objective adds no scaling of its own
    m.zero_grad()
    one = plan(m, len(batch), "batch", "sample", {"asr": 1, "vsr": 0, "avsr": 0}, random.Random(0))
    assert len(one) == 1 and one[0].task == "asr"
    direct = m(batch, task="asr", rates=one[0].rates)
    assert torch.allclose(objective(m, batch, one).loss, direct.loss)


def test_task_specific_adapters_change_only_their_task(tokenizer, batch):
    """Omni-AVSR-T: the ASR adapter does not touch the VSR output."""
    torch.manual_seed(0)
    m = AVSRModel(build(strategy="specific"), tokenizer=tokenizer).eval()

    def logits(task):
        seq = m.prepare(batch, with_targets=True, task=task)
        with torch.no_grad():
            return m.llm(inputs_embeds=seq.embeds, attention_mask=seq.attention_mask).logits

    before = {t: logits(t) for t in ("asr", "vsr")}
    with torch.no_grad():
        for n, p in m.named_parameters():
            if ".lora_B.asr." in n:
                p.add_(0.5)
    assert not torch.allclose(logits("asr"), before["asr"])
    assert torch.allclose(logits("vsr"), before["vsr"])


# -- decoding and the model directory ------------------------------------------------------------


def test_every_task_and_rate_decodes_and_survives_save_load(model, batch, tmp_path):
    batch = batch.select([0, 2])
    greedy = DecodingOptions(num_beams=1, max_new_tokens=3)
    exp = ExperimentConfig(model=model.cfg)
    save_model_dir(model, exp, tmp_path / "omni")
    loaded, exp2 = load_model_dir(tmp_path / "omni")
    assert exp2.model.tasks == ["asr", "vsr", "avsr"] and exp2.model.streams["audio"].compression.ratios == [
        2,
        4,
    ]
    tokens: dict[tuple[str, str], int] = {}
    for task in ("asr", "vsr", "avsr"):
        for rates in model.cfg.rate_combinations(task):
            hyp = decode(model, batch, greedy, task, rates)
            again = decode(loaded, batch, greedy, task, rates)
            assert [h.text for h in hyp] == [h.text for h in again], (task, rates)
            tokens[task, str(rates)] = sum(h.media_tokens for h in hyp)
    # stronger compression gives the LLM fewer tokens; AVSR reads both streams
    assert tokens["asr", "{'audio': 4}"] < tokens["asr", "{'audio': 2}"]
    assert (
        tokens["avsr", "{'audio': 2, 'video': 1}"]
        == tokens["asr", "{'audio': 2}"] + tokens["vsr", "{'video': 1}"]
    )
    with pytest.raises(ValueError, match="not 16"):
        decode(loaded, batch, greedy, "asr", {"audio": 16})
    from llama_avsr.model_dir import ModelDirError, export_merged

    with pytest.raises(ModelDirError, match="4 LoRA adapters"):
        export_merged(tmp_path / "omni", tmp_path / "merged")
    with pytest.raises(ValueError, match="trained for"):
        single = AVSRModel(build(strategy="shared", tasks=["avsr"]), meta=True)
        single.cfg.check_task("vsr")


def test_transcribe_picks_the_task_from_the_input_streams(model, batch, tmp_path):
    from llama_avsr.decoding.transcriber import Transcriber

    tr = Transcriber(model, ExperimentConfig(model=model.cfg))
    audio = batch.inputs["audio"][0, : int(batch.lengths["audio"][0])].numpy()
    video = (torch.rand(int(batch.lengths["video"][0]), 96, 96) * 255).to(torch.uint8).numpy()
    both = tr.transcribe({"audio": audio, "video": video}, beams=2, max_new_tokens=4)
    assert isinstance(both.text, str)
    alone = tr.transcribe(audio, beams=2, max_new_tokens=4, rates={"audio": 4})
    explicit = tr.transcribe(
        {"audio": audio, "video": video}, beams=2, max_new_tokens=4, task="asr", rates="audio=4"
    )
    assert alone.text == explicit.text  # audio only → ASR, the video of the second input unused
    with pytest.raises(ValueError, match="not 3"):
        tr.transcribe(audio, rates={"audio": 3})


def test_paper_omni_parameters_match_the_paper(capsys):
    """Omni-AVSR-ST on Llama-3.2-1B: the issue quotes the paper's 58 M trainable parameters for all tasks
    and rates; our count (per-rate projectors, AV-HuBERT LoRA, shared + 3 task adapters) is 58.75 M."""
    assert main(["params", "--config", "paper/omni"]) == 0
    out = capsys.readouterr().out
    trainable = int(out.strip().splitlines()[-1].split()[-1])
    assert abs(trainable - 58e6) / 58e6 < 0.015, trainable
    assert "shared+specific by task (this config)" in out and "specific by task" in out


# -- released Omni-AVSR checkpoints -----------------------------------------------------------------


def omni_checkpoint(model: AVSRModel, seed: int = 3) -> dict[str, torch.Tensor]:
    """A synthetic state dict in Omni-AVSR's layout (its public modeling code): per-rate projectors
    ``audio_proj.I.*``, task LoRA ``lora_down_Q.audio`` …, the shared one ``lora_down_Q_shared``, AV-HuBERT
    LoRA under ``video_encoder.``, prompt buffers; frozen weights of the random-init parts beside them."""
    from llama_avsr.reference import reference_key

    g = torch.Generator().manual_seed(seed)
    rnd = lambda t: torch.randn(t.shape, generator=g) * 0.1  # noqa: E731
    state: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():  # frozen tensors: the Llama-AVSR names (tested elsewhere)
        if ".lora_" not in key and not key.startswith("projectors."):
            ref = reference_key(model, key)
            if ref is not None:
                state[ref] = t.clone()
    hid, r = model.hidden_size, model.cfg.llm.lora.rank_for(model.hidden_size)
    v_out = base_v_out(model)
    for n in range(2):  # tiny-llama has 2 layers
        pre = f"llm.model.layers.{n}.self_attn"
        for suffix in ["_shared", ".audio", ".video", ".audiovisual"]:
            for t, out in (("Q", hid), ("V", v_out)):
                state[f"{pre}.lora_down_{t}{suffix}.weight"] = rnd(torch.empty(r, hid))
                state[f"{pre}.lora_up_{t}{suffix}.weight"] = rnd(torch.empty(out, r))
    for stream, rates in (("audio", [2, 4]), ("video", [1, 2])):
        for i, k in enumerate(rates):
            for layer, t in model.projector(stream, k).state_dict().items():
                state[f"{stream}_proj.{i}.{layer}"] = rnd(t)
    for key, t in model.encoders["avhubert"].state_dict().items():
        if ".lora_" in key:
            state["video_encoder." + key.removeprefix("model.")] = rnd(t)
    state["prompt_audio"] = torch.zeros(1, 5, hid)  # the reference's prompt embeddings: not weights
    return state


def base_v_out(model: AVSRModel) -> int:
    from llama_avsr.models.llm import base_causal_lm

    return base_causal_lm(model.llm).model.layers[0].self_attn.v_proj.base_layer.out_features


def test_omni_checkpoint_imports_with_its_tasks_rates_and_lora_sum(tokenizer, batch):
    from llama_avsr.models.llm import base_causal_lm
    from llama_avsr.reference import ReferenceCheckpointError, load_reference_state

    torch.manual_seed(0)
    model = AVSRModel(build(), tokenizer=tokenizer).eval()
    state = omni_checkpoint(model)
    report = load_reference_state(model, state, "omni.pth")
    assert len(report.trainable) == len(model.trainable_state_dict())
    # projectors: the I-th of the reference's list is the I-th rate
    assert torch.equal(model.projector("audio", 4)[0].weight, state["audio_proj.1.0.weight"])
    assert torch.equal(model.projector("video", 1)[2].bias, state["video_proj.0.2.bias"])
    # LoRA: q = W x + (up_task(down_task x) + up_shared(down_shared x)) · alpha / reduction, per task
    attn = base_causal_lm(model.llm).model.layers[1].self_attn
    x = torch.randn(3, model.hidden_size)
    scaling = model.cfg.llm.lora.scaling
    pre = "llm.model.layers.1.self_attn"
    for task, mod in (("asr", "audio"), ("vsr", "video"), ("avsr", "audiovisual")):
        model.select(task)
        with torch.no_grad():
            got = attn.q_proj(x)
        lora = sum(
            x @ state[f"{pre}.lora_down_Q{s}.weight"].T @ state[f"{pre}.lora_up_Q{s}.weight"].T
            for s in (f".{mod}", "_shared")
        )
        want = attn.q_proj.base_layer(x) + lora * scaling
        assert torch.allclose(got, want, atol=1e-5), task
    # the imported model decodes every task at every rate
    for task in ("asr", "vsr", "avsr"):
        for rates in model.cfg.rate_combinations(task):
            assert (
                len(
                    decode(
                        model, batch.select([0]), DecodingOptions(num_beams=1, max_new_tokens=2), task, rates
                    )
                )
                == 1
            )
    # a recipe with adapters per rate has no counterpart in the layout: a clear error
    other = AVSRModel(build(strategy="specific", specific_to="rates"), tokenizer=tokenizer)
    with pytest.raises(ReferenceCheckpointError, match="does not match the recipe"):
        load_reference_state(other, state, "omni.pth")


# -- Llama-MTSK checkpoints (one task, Matryoshka rates, global / scale-specific LoRA) ---------------

#: Llama-MTSK's LoRA strategies as our config: MS (one LoRA for all rates), SS (one per rate), MSS (both)
MTSK = {"MS": "shared", "SS": "specific", "MSS": "shared+specific"}
#: the tiny AVSR model's rate combinations in the order Llama-MTSK builds them (video outer, audio inner)
MTSK_ORDER = [{"audio": a, "video": v} for v in (1, 2) for a in (2, 4)]


def mtsk_checkpoint(model: AVSRModel, variant: str, seed: int = 5) -> dict[str, torch.Tensor]:
    """A synthetic Llama-MTSK (AVSR) state dict in the layout of its public code: per-rate projectors
    ``audio_proj.I.*``, LoRA as ``lora_down_Q`` (MS), ``local_loras.I.lora_down_Q`` (SS) and
    ``global_lora.lora_down_Q`` beside them (MSS), AV-HuBERT LoRA, frozen weights of the random parts."""
    from llama_avsr.reference import reference_key

    g = torch.Generator().manual_seed(seed)
    rnd = lambda shape: torch.randn(shape, generator=g) * 0.1  # noqa: E731
    state: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        if ".lora_" not in key and not key.startswith("projectors."):
            ref = reference_key(model, key)
            if ref is not None:
                state[ref] = t.clone()
    hid, r = model.hidden_size, model.cfg.llm.lora.rank_for(model.hidden_size)
    modules = {"MS": [""], "SS": [], "MSS": ["global_lora."]}[variant]
    if variant != "MS":
        modules += [f"local_loras.{i}." for i in range(len(MTSK_ORDER))]
    for n in range(2):  # tiny-llama's layers
        for module in modules:
            for t, out in (("Q", hid), ("V", base_v_out(model))):
                state[f"llm.model.layers.{n}.self_attn.{module}lora_down_{t}.weight"] = rnd((r, hid))
                state[f"llm.model.layers.{n}.self_attn.{module}lora_up_{t}.weight"] = rnd((out, r))
    for stream, rates in (("audio", [2, 4]), ("video", [1, 2])):
        for i, k in enumerate(rates):
            for layer, t in model.projector(stream, k).state_dict().items():
                state[f"{stream}_proj.{i}.{layer}"] = rnd(t.shape)
    for key, t in model.encoders["avhubert"].state_dict().items():
        if ".lora_" in key:
            state["video_encoder." + key.removeprefix("model.")] = rnd(t.shape)
    return state


def test_mtsk_local_lora_order_is_the_reference_matryoshka_loop():
    from llama_avsr.reference import reference_rate_order

    assert reference_rate_order(build(strategy="specific", specific_to="rates", tasks=None)) == MTSK_ORDER
    asr = omni_cfg(strategy="specific", specific_to="rates", tasks=None, ratios=[4, 2, 8])
    del asr["streams"]["video"], asr["encoders"]["avhubert"]
    assert reference_rate_order(from_dict(ModelConfig, asr)) == [{"audio": 4}, {"audio": 2}, {"audio": 8}]
    assert reference_rate_order(build(strategy="specific", specific_to="rates")) is None  # multi-task


@pytest.mark.parametrize("variant", ["MS", "SS", "MSS"])
def test_mtsk_checkpoint_imports_with_per_rate_projectors_and_lora(variant, tokenizer, batch):
    from llama_avsr.models.llm import base_causal_lm
    from llama_avsr.reference import ReferenceCheckpointError, load_reference_state

    torch.manual_seed(0)
    cfg = build(strategy=MTSK[variant], specific_to="rates", tasks=None)
    model = AVSRModel(cfg, tokenizer=tokenizer).eval()
    state = mtsk_checkpoint(model, variant)
    report = load_reference_state(model, state, "mtsk.pth")
    assert len(report.trainable) == len(model.trainable_state_dict())
    assert set(report.trainable.values()) == {
        k for k in state if ".lora_" in k or k.startswith(("audio_proj.", "video_proj."))
    }
    assert torch.equal(model.projector("audio", 4)[2].weight, state["audio_proj.1.2.weight"])
    assert torch.equal(model.projector("video", 2)[0].bias, state["video_proj.1.0.bias"])
    # at each rate combination: q = W x + (local_I + global) · alpha / reduction, I its place in MTSK_ORDER
    attn = base_causal_lm(model.llm).model.layers[1].self_attn
    x = torch.randn(3, model.hidden_size)
    pre = "llm.model.layers.1.self_attn."
    for i, rates in enumerate(MTSK_ORDER):
        model.select("avsr", rates)
        with torch.no_grad():
            got = attn.v_proj(x)
        modules = {"MS": [""], "SS": [f"local_loras.{i}."], "MSS": [f"local_loras.{i}.", "global_lora."]}
        lora = sum(
            x @ state[f"{pre}{m}lora_down_V.weight"].T @ state[f"{pre}{m}lora_up_V.weight"].T
            for m in modules[variant]
        )
        want = attn.v_proj.base_layer(x) + lora * cfg.llm.lora.scaling
        assert torch.allclose(got, want, atol=1e-5), rates
    if variant == "MSS":  # the imported model decodes at every rate combination
        for rates in MTSK_ORDER:
            assert len(decode(model, batch.select([0]), OPTS, "avsr", rates)) == 1
    # a checkpoint of another strategy does not fit the recipe: a clear error, nothing loaded
    other = mtsk_checkpoint(model, "MS" if variant != "MS" else "SS", seed=6)
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    with pytest.raises(ReferenceCheckpointError, match="does not match the recipe"):
        load_reference_state(model, other, "mtsk.pth")
    assert all(torch.equal(v, before[k]) for k, v in model.trainable_state_dict().items())
