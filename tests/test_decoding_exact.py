"""The fast decoding path (length-sorted batches, the prompt run once per utterance, its KV cache copied
to the beams) gives the transcripts of the exact one-at-a-time path (Hugging Face's beam search on one
utterance, the prompt run once per beam, as the published code) — in float32, on a model trained until
it transcribes (EOS, different transcripts of different lengths), not on an untrained model whose every
beam runs to ``max_new_tokens`` with one repeated token."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from llama_avsr.config import load_yaml
from llama_avsr.data.collate import Collator
from llama_avsr.decoding.search import decode
from llama_avsr.experiment import ExperimentConfig
from llama_avsr.models.avsr import AVSRModel

TINY = Path(__file__).resolve().parent / "configs" / "tiny_avsr.yaml"
TEXTS = ["one two three", "four five", "six seven eight nine", "ten", "eleven twelve", "thirteen fourteen"]


@pytest.fixture(scope="module")
def trained(smollm2_dir):
    """(model, samples, decoding options): the tiny test model, audio only (random Whisper-architecture
    encoder, tiny Llama), trained for a fixed number of full-parameter steps on six utterances."""
    data = load_yaml(TINY)
    del data["model"]["streams"]["video"], data["model"]["encoders"]["avhubert"]
    exp = ExperimentConfig.from_dict(data)
    torch.manual_seed(0)
    model = AVSRModel(exp.model)
    for p in model.llm.parameters():  # the tiny random LLM learns too: LoRA alone is slow to train
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    samples = []
    for i, text in enumerate(TEXTS):
        frames = 10 + 3 * i  # 0.4–0.9 s, all lengths different: the batch is padded
        samples.append(
            {
                "id": str(i),
                "text": text,
                "audio": 0.1 * torch.randn(frames * 640, generator=g),
            }
        )
    batch = Collator(model.tokenizer, ["audio"])(samples)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(30):
        loss = model(batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses  # it learned the transcripts
    return model.eval(), samples, exp.decode


def run(model, samples, options, batch_size):
    col = Collator(model.tokenizer, ["audio"], with_targets=False)
    order = sorted(range(len(samples)), key=lambda i: samples[i]["audio"].shape[0])  # length-sorted
    hyps = {}
    for k in range(0, len(order), batch_size):
        chunk = order[k : k + batch_size]
        for i, h in zip(chunk, decode(model, col([samples[i] for i in chunk]), options), strict=True):
            hyps[i] = h
    return [hyps[i] for i in range(len(samples))]


@pytest.mark.parametrize("num_beams", [4, 1], ids=["beam", "greedy"])
def test_fast_decoding_gives_the_exact_paths_float32_transcripts(trained, num_beams):
    model, samples, dec = trained
    opts = dataclasses.replace(dec, num_beams=num_beams, max_new_tokens=10)
    exact = run(model, samples, dataclasses.replace(opts, prefill_once=False), batch_size=1)
    fast = run(model, samples, dataclasses.replace(opts, prefill_once=True), batch_size=4)
    assert [h.text for h in fast] == [h.text for h in exact]
    assert [h.tokens for h in fast] == [h.tokens for h in exact]
    # a model that transcribes: transcripts end on EOS, differ, and have different lengths
    assert sum(h.finished for h in exact) >= 4
    assert len({h.text for h in exact}) >= 4 and len({h.tokens for h in exact}) >= 2
    assert sum(h.text == t for h, t in zip(exact, TEXTS, strict=True)) >= 3
