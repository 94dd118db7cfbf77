"""QLoRA-style training: the frozen LLM's linear weights stored in 4-bit NF4 or 8-bit with bitsandbytes.

Only the frozen base layers are replaced (attention and MLP projections of every decoder layer, the
base layer inside each PEFT LoRA module); LoRA adapters, projectors, embeddings and the output layer
keep their dtype. The weights are quantised when the model moves to the GPU. The trained weights that
are saved (LoRA, projectors) do not depend on it: the model directory references the unquantised base
model as usual, and evaluation loads it in ``model.llm.dtype`` (the adapters were trained against the
quantised weights, a small mismatch QLoRA accepts too).

bitsandbytes is an optional dependency, imported only here; it needs a CUDA GPU.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from llama_avsr.models.llm import base_causal_lm

log = logging.getLogger(__name__)


def require_bitsandbytes(mode: str):
    """The bitsandbytes module, or a clear error (no CUDA, not installed)."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"train.llm_quantization={mode} needs a CUDA GPU (bitsandbytes kernels); on the CPU leave it "
            "null and keep the frozen LLM in bf16 (model.llm.dtype: bfloat16)"
        )
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise RuntimeError(
            f"train.llm_quantization={mode} needs bitsandbytes, an optional dependency: pip install bitsandbytes"
        ) from e
    return bnb


def _frozen_linears(decoder: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) of every frozen ``nn.Linear`` inside the decoder layers."""
    found = []
    for parent in decoder.modules():
        for attr, child in parent.named_children():
            if type(child) is nn.Linear and not any(p.requires_grad for p in child.parameters()):
                found.append((parent, attr, child))
    return found


def quantize_frozen_llm(llm: nn.Module, mode: str, compute_dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace the frozen linear layers of ``llm``'s decoder layers by bitsandbytes layers (in place).

    mode: ``nf4`` (4-bit NormalFloat, double quantisation) or ``int8`` (LLM.int8()).
    Returns the number of layers replaced. Quantisation happens on ``.to("cuda")``.
    """
    bnb = require_bitsandbytes(mode)
    layers = base_causal_lm(llm).get_decoder().layers
    replaced = 0
    for parent, attr, lin in _frozen_linears(layers):
        bias = lin.bias is not None
        weight = lin.weight.data
        if mode == "nf4":
            q = bnb.nn.Linear4bit(
                lin.in_features,
                lin.out_features,
                bias=bias,
                compute_dtype=compute_dtype,
                quant_type="nf4",
                compress_statistics=True,
                device="meta",
            )
            q.weight = bnb.nn.Params4bit(
                weight.to(compute_dtype), requires_grad=False, quant_type="nf4", compress_statistics=True
            )
        elif mode == "int8":
            q = bnb.nn.Linear8bitLt(
                lin.in_features,
                lin.out_features,
                bias=bias,
                has_fp16_weights=False,
                threshold=6.0,
                device="meta",
            )
            q.weight = bnb.nn.Int8Params(
                weight.to(torch.float16), requires_grad=False, has_fp16_weights=False
            )
        else:
            raise ValueError(f"unknown quantisation {mode!r}; choose nf4 or int8")
        if bias:
            q.bias = nn.Parameter(lin.bias.data.to(compute_dtype), requires_grad=False)
        setattr(parent, attr, q)
        replaced += 1
    log.info("quantised %d frozen LLM linear layers to %s (bitsandbytes)", replaced, mode)
    return replaced
