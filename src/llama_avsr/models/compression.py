"""Length-aware frame compression before the projector.

``stack``: concatenate k consecutive frames, (B, T, D) → (B, T/k, D·k) [paper].
``avg-pool``: average k consecutive frames, (B, T, D) → (B, T/k, D).

Remainder frames (T mod k of a sample's valid length): ``drop`` (the reference: they are discarded) or
``pad`` (zeros complete the last group; avg-pool then averages the valid frames only). A sample keeps at
least one output frame. Frames past a sample's length are zeroed first, so padding never leaks.
"""

from __future__ import annotations

import torch
from torch import nn

from llama_avsr.config import CompressionConfig
from llama_avsr.registry import Registry

COMPRESSORS: Registry[type[Compressor]] = Registry("compressor")


class Compressor(nn.Module):
    def __init__(self, ratio: int, remainder: str = "drop") -> None:
        super().__init__()
        self.ratio = ratio
        self.remainder = remainder

    def output_dim(self, input_dim: int) -> int:
        raise NotImplementedError

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        k = self.ratio
        out = lengths // k if self.remainder == "drop" else (lengths + k - 1) // k
        return out.clamp(min=1)

    def _groups(
        self, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Zero padding frames and reshape to groups: (B, T, D) → (B, T', k, D), valid (B, T', k), T'."""
        b, t, d = x.shape
        k = self.ratio
        out_len = self.output_lengths(lengths)
        t_out = int(out_len.max())
        if t_out * k > t:
            x = torch.nn.functional.pad(x, (0, 0, 0, t_out * k - t))
        x = x[:, : t_out * k]
        valid = torch.arange(t_out * k, device=x.device)[None] < lengths[:, None]
        x = x * valid[..., None].to(x.dtype)
        return x.reshape(b, t_out, k, d), valid.reshape(b, t_out, k), out_len

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@COMPRESSORS.register("stack")
class Stack(Compressor):
    def output_dim(self, input_dim: int) -> int:
        return input_dim * self.ratio

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, _, out_len = self._groups(x, lengths)
        return g.flatten(2), out_len


@COMPRESSORS.register("avg-pool")
class AvgPool(Compressor):
    def output_dim(self, input_dim: int) -> int:
        return input_dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, valid, out_len = self._groups(x, lengths)
        count = valid.sum(-1, keepdim=True).clamp(min=1).to(x.dtype)
        return g.sum(2) / count, out_len


def build_compressor(cfg: CompressionConfig) -> Compressor:
    return COMPRESSORS.get(cfg.kind)(cfg.ratio, cfg.remainder)
