"""The LLM: any Hugging Face causal LM, its tokenizer with the added special tokens, and LoRA.

Nothing here is keyed on model names: hidden sizes come from the loaded config, BOS/EOS/pad ids from
the tokenizer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from llama_avsr.config import (
    PAD_TOKEN,
    SHARED_ADAPTER,
    SPECIAL_TOKENS,
    LLMConfig,
    LoRAConfig,
    find_arch,
    torch_dtype,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenIds:
    """Special-token ids the model needs, read from the tokenizer."""

    bos: int
    eos: int
    pad: int
    added: dict[str, int]


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer and add ``<pad>`` and the modality delimiters (``config.SPECIAL_TOKENS``)."""
    from llama_avsr.hub import resolve

    tok = AutoTokenizer.from_pretrained(str(resolve(source, "llm")))
    tok.add_special_tokens({"pad_token": PAD_TOKEN, "additional_special_tokens": list(SPECIAL_TOKENS)})
    tok.padding_side = "left"
    return tok


def token_ids(tok: PreTrainedTokenizerBase) -> TokenIds:
    """BOS falls back to EOS for tokenizers without one (GPT-style), so every sequence has a start."""
    if tok.eos_token_id is None:
        raise ValueError("the LLM tokenizer defines no EOS token; transcripts need one to end")
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    added = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return TokenIds(bos=bos, eos=tok.eos_token_id, pad=tok.pad_token_id, added=added)


def load_llm(cfg: LLMConfig, vocab_size: int | None, meta: bool = False) -> nn.Module:
    """Load (or, with ``cfg.source=None`` / ``meta``, build from ``cfg.arch``) the causal LM.

    vocab_size: tokenizer length after adding special tokens; the embedding matrix is resized to it
        (new rows start at the mean embedding).  ``None`` on meta builds adds ``len(SPECIAL_TOKENS)+1``.
    """
    dtype = torch_dtype(cfg.dtype)
    if meta or cfg.source is None:
        if cfg.arch is not None:
            config = AutoConfig.for_model(**json.loads(find_arch(cfg.arch).read_text()))
        else:
            from llama_avsr.hub import resolve

            config = AutoConfig.from_pretrained(str(resolve(cfg.source, "llm")))
        config._attn_implementation = cfg.attn_implementation
        ctx = torch.device("meta") if meta else torch.device("cpu")
        with ctx:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        from llama_avsr.hub import resolve
        from llama_avsr.safe_load import check_pickled_weights

        where = resolve(cfg.source, "llm")
        if not isinstance(
            where, str
        ):  # a local folder: its pickles are checked before transformers reads them
            check_pickled_weights(where)
        model = AutoModelForCausalLM.from_pretrained(
            str(where), dtype=dtype, attn_implementation=cfg.attn_implementation
        )
    if vocab_size is None:
        vocab_size = model.config.vocab_size + len(SPECIAL_TOKENS) + 1
    if vocab_size != model.get_input_embeddings().weight.shape[0]:
        _resize_embeddings(model, vocab_size, meta)
    model.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


@torch.no_grad()
def _resize_embeddings(model: nn.Module, vocab_size: int, meta: bool) -> None:
    """Grow the token embeddings (and an untied output layer) to ``vocab_size``; each new row is the mean
    of the existing rows, computed in float64.

    transformers' ``mean_resizing`` draws the new rows from N(mean, 1e-9 · covariance): the same rows to
    within ~1e-5 of their norm, but through a covariance matmul whose last bits depend on the number of
    threads, so two processes of one thread each (a two-process run on two cores) built other frozen
    weights than one process of two threads. Its draw is kept (then overwritten) so that the random
    generator moves on exactly as it did: the random parts built next (LoRA, projectors) are unchanged."""
    old = model.get_input_embeddings().weight.shape[0]
    hf_log = logging.getLogger("transformers.modeling_utils")  # its note on the draw, which is replaced
    level = hf_log.level
    hf_log.setLevel(logging.ERROR)
    try:
        model.resize_token_embeddings(vocab_size, mean_resizing=not meta)
    finally:
        hf_log.setLevel(level)
    if meta or vocab_size <= old:
        return
    layers = [model.get_input_embeddings()]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not layers[0].weight:
        layers.append(out)
    for layer in layers:
        w = layer.weight
        w[old:] = w[:old].double().mean(0).to(w.dtype)
        bias = getattr(layer, "bias", None)
        if bias is not None and bias.shape[0] == w.shape[0]:
            bias[old:] = bias[:old].double().mean().to(bias.dtype)


def apply_lora(model: nn.Module, cfg: LoRAConfig, adapters: list[str] | None = None) -> nn.Module:
    """Wrap the LLM with PEFT LoRA with the reference semantics.

    r = hidden / reduction; scaling = alpha / reduction, i.e. PEFT ``lora_alpha = scaling · r``.
    PEFT sizes each adapter from its target layer, so v's LoRA output width follows v_proj
    (grouped-query attention).

    adapters: the adapter names (``ModelConfig.all_adapters``: ``default`` for the shared one, a task
    / rate key for each specific one), all with the same settings; the first is active.
    """
    from peft import LoraConfig, get_peft_model

    r = cfg.rank_for(model.config.hidden_size)
    peft_cfg = LoraConfig(
        r=r,
        lora_alpha=cfg.scaling * r,
        target_modules=list(cfg.targets),
        lora_dropout=cfg.dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )
    adapters = adapters or [SHARED_ADAPTER]
    peft_model = get_peft_model(model, peft_cfg, adapter_name=adapters[0])
    for name in adapters[1:]:
        peft_model.add_adapter(name, peft_cfg)
    return peft_model


def activate_adapters(llm: nn.Module, names: list[str]) -> None:
    """Switch the LLM's active LoRA adapters to ``names`` (their outputs are summed), keeping every
    adapter's ``requires_grad`` as it was: what trains is decided once, in the model."""
    grads = {n: p.requires_grad for n, p in llm.named_parameters() if "lora_" in n}
    llm.base_model.set_adapter(names if len(names) > 1 else names[0])
    for n, p in llm.named_parameters():
        if n in grads:
            p.requires_grad_(grads[n])


def base_causal_lm(llm: nn.Module) -> Any:
    """The underlying ``*ForCausalLM`` (unwraps a PEFT model)."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm
