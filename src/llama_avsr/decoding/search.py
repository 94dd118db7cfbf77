"""Batched, deterministic beam search over a fused model's prompt → transcripts.

The model (``models/avsr.py``) builds the LLM input — stream features spliced at their placeholders —
and decoding runs the search on it. Every inference path (``transcribe``, ``eval``, the demo, the bench
and the Python API) goes through :func:`decode`.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from llama_avsr.data.batch import Batch
from llama_avsr.decoding.options import DecodingOptions
from llama_avsr.models.avsr import AVSRModel
from llama_avsr.models.llm import base_causal_lm
from llama_avsr.models.splice import Sequences


@dataclass(frozen=True)
class Hypothesis:
    """One decoded utterance.

    tokens: new tokens generated, EOS excluded.
    finished: the search ended on EOS; ``False`` means it stopped at ``max_new_tokens`` and the text
        may be cut short.
    media_tokens: LLM input positions that held audio / video features (the cost of the compression
        rate; delimiters and prompt not counted).
    """

    text: str
    tokens: int
    finished: bool
    media_tokens: int = 0
    #: LLM input positions before the first generated token (BOS, media, delimiters, prompt)
    input_tokens: int = 0


def inference_autocast(model: AVSRModel) -> contextlib.AbstractContextManager:
    """bf16 autocast when the LLM weights are stored in bf16, so the fp32 parts (projectors, LoRA
    adapters) do not force fp32 matmuls at inference (about 2× faster decoding on CPU)."""
    dtype = model.llm.get_input_embeddings().weight.dtype
    device = model.device.type
    if dtype not in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled(device):
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=dtype)


@torch.no_grad()
def decode(
    model: AVSRModel,
    batch: Batch,
    options: DecodingOptions | None = None,
    task: str | None = None,
    rates: dict[str, int] | None = None,
) -> list[Hypothesis]:
    """Deterministic batched beam search (``do_sample=False``) with KV cache → one hypothesis per sample.

    task, rates: for a multi-task / multi-rate model, the task (``asr``, ``vsr``, ``avsr``) and the
    compression rate per stream (``{"audio": 16}``); defaults: the model's (``ModelConfig.check_task``,
    ``check_rates``). A task or rate the model was not trained for is a ``ValueError``.
    """
    options = options or DecodingOptions()
    with inference_autocast(model):
        seq = model.prepare(batch, with_targets=False, task=task, rates=rates)
        media = (seq.stream_index >= 0).sum(1).tolist()
        inputs = seq.attention_mask.sum(1).tolist()
        gen = GenerationConfig(
            num_beams=options.num_beams,
            max_new_tokens=options.max_new_tokens,
            length_penalty=options.length_penalty,
            do_sample=False,
            early_stopping=True if options.num_beams > 1 else False,
            use_cache=True,
            eos_token_id=model.ids.eos,
            pad_token_id=model.ids.pad,
            bos_token_id=model.ids.bos,
        )
        # the cache must end on a text token, the one generation continues from (the prompt's last)
        if options.prefill_once and options.num_beams > 1 and bool((seq.stream_index[:, -1] < 0).all()):
            ids = _generate_prefilled(model, seq, gen)
        else:
            ids = model.llm.generate(
                inputs_embeds=seq.embeds, attention_mask=seq.attention_mask, generation_config=gen
            )
    texts = [t.strip() for t in model.tokenizer.batch_decode(ids, skip_special_tokens=True)]
    out = []
    for row, text, m, k in zip(ids.tolist(), texts, media, inputs, strict=True):
        eos = row.index(model.ids.eos) if model.ids.eos in row else None
        body = row[:eos] if eos is not None else row
        n = sum(t != model.ids.pad for t in body)
        out.append(Hypothesis(text, n, eos is not None or n < options.max_new_tokens, int(m), int(k)))
    return out


def generate(
    model: AVSRModel,
    batch: Batch,
    options: DecodingOptions | None = None,
    task: str | None = None,
    rates: dict[str, int] | None = None,
) -> list[str]:
    """:func:`decode`, texts only."""
    return [h.text for h in decode(model, batch, options, task, rates)]


def parse_rates(text: str | dict[str, int] | None) -> dict[str, int] | None:
    """``"audio=16,video=5"`` → ``{"audio": 16, "video": 5}`` (a dict or ``None`` passes through)."""
    if text is None or isinstance(text, dict):
        return text
    out: dict[str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, eq, k = part.partition("=")
        if not eq or not k.strip().isdigit():
            raise ValueError(f"rates {text!r}: give stream=rate pairs, e.g. audio=16,video=5")
        out[name.strip()] = int(k)
    return out


def _generate_prefilled(model: AVSRModel, seq: Sequences, gen: GenerationConfig) -> torch.Tensor:
    """Beam search with the prompt run once per utterance → new token ids (B, L).

    HF's beam search copies the inputs for every beam before the first forward pass, so the prompt
    (features included: most of the sequence) runs ``num_beams`` times. Here everything but the
    last token fills the KV cache once, the cache is repeated per beam, and generation continues
    from the last token, given as an id (it is a text token); positions follow the attention mask
    as in :func:`~llama_avsr.models.splice.build_sequences`.
    """
    base = base_causal_lm(model.llm)
    out = base.get_decoder()(
        inputs_embeds=seq.embeds[:, :-1],
        attention_mask=seq.attention_mask[:, :-1],
        position_ids=seq.position_ids[:, :-1],
        use_cache=True,
    )
    # transformers renamed `past_key_values` to `cache` during 5.x
    name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    cache = getattr(out, name)
    cache.batch_repeat_interleave(gen.num_beams)
    ids = model.llm.generate(
        input_ids=seq.input_ids,
        attention_mask=seq.attention_mask,
        generation_config=gen,
        **{name: cache},
    )
    return ids[:, seq.input_ids.shape[1] :]
