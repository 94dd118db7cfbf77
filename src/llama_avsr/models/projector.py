"""The modality projector [paper]: Linear(dim_in → hidden) → ReLU → Linear(hidden → H_llm) [→ LayerNorm].

An ``nn.Sequential`` so parameter names match the reference checkpoints (``0.*``, ``2.*``, ``3.*``).
"""

from __future__ import annotations

from torch import nn

from llama_avsr.config import ProjectorConfig


class Projector(nn.Sequential):
    """(B, T, dim_in) → (B, T, H_llm)."""

    def __init__(self, dim_in: int, dim_out: int, cfg: ProjectorConfig) -> None:
        layers: list[nn.Module] = [nn.Linear(dim_in, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, dim_out)]
        if cfg.layernorm:
            layers.append(nn.LayerNorm(dim_out))
        super().__init__(*layers)
