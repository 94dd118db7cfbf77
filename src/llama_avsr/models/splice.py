"""Lay out the LLM input sequence and splice modality features into it — one path for training and
generation.

Per sample (the paper's and the published code's layout)::

    BOS, <audio> A_1 … A_n </audio>, <video> V_1 … V_m </video>, prompt…, transcript…, EOS

Streams appear in config order; a stream without delimiter tokens contributes only its features.
Each sample has as many placeholders as its own compressed feature length. Sequences are left-padded
to the batch maximum, with position ids counted from each sample's first real token, so a sample's
computation does not depend on what it is batched with; generation then simply continues every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llama_avsr.data.batch import PAD_LABEL


@dataclass
class StreamFeatures:
    """Projected features of one stream: (B, T, H) with valid lengths (B,) and delimiter token ids."""

    features: torch.Tensor
    lengths: torch.Tensor
    begin: int | None = None
    end: int | None = None


@dataclass
class Sequences:
    """LLM inputs, all (B, S): embeddings (B, S, H), masks, positions, labels, and which stream a
    position holds (``stream_index``: -1 for text tokens)."""

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    input_ids: torch.Tensor
    stream_index: torch.Tensor
    #: (B,) index of each row's first real token (BOS)
    start: torch.Tensor


def build_sequences(
    embed: nn.Embedding,
    streams: list[StreamFeatures],
    prompt_ids: list[int],
    bos_id: int,
    pad_id: int,
    target_ids: torch.Tensor | None = None,
) -> Sequences:
    """Build the padded sequences and splice stream features at their placeholders.

    target_ids: (B, L) transcript+EOS ids right-padded with ``PAD_LABEL``; ``None`` for generation
        (the sequence then ends after the prompt).
    Raises ``ValueError`` if a stream's placeholder count differs from its number of valid features.
    """
    device = embed.weight.device
    b = streams[0].features.shape[0] if streams else target_ids.shape[0]
    rows: list[list[int]] = []
    kinds: list[list[int]] = []
    labels: list[list[int]] = []
    stream_lengths = [s.lengths.tolist() for s in streams]
    targets = None if target_ids is None else target_ids.tolist()
    for i in range(b):
        toks, kind = [bos_id], [-1]
        for s, st in enumerate(streams):
            n = stream_lengths[s][i]
            if st.begin is not None:
                toks.append(st.begin)
                kind.append(-1)
            toks += [pad_id] * n
            kind += [s] * n
            if st.end is not None:
                toks.append(st.end)
                kind.append(-1)
        toks += prompt_ids
        kind += [-1] * len(prompt_ids)
        lab = [PAD_LABEL] * len(toks)
        if targets is not None:
            tgt = [t for t in targets[i] if t != PAD_LABEL]
            toks += tgt
            kind += [-1] * len(tgt)
            lab += tgt
        rows.append(toks)
        kinds.append(kind)
        labels.append(lab)

    s_max = max(len(r) for r in rows)
    input_ids = torch.full((b, s_max), pad_id, dtype=torch.long)
    stream_index = torch.full((b, s_max), -1, dtype=torch.long)
    label_t = torch.full((b, s_max), PAD_LABEL, dtype=torch.long)
    attn = torch.zeros((b, s_max), dtype=torch.long)
    for i, (r, k, lab) in enumerate(zip(rows, kinds, labels, strict=True)):
        off = s_max - len(r)
        input_ids[i, off:] = torch.tensor(r)
        stream_index[i, off:] = torch.tensor(k)
        label_t[i, off:] = torch.tensor(lab)
        attn[i, off:] = 1
    input_ids, stream_index, label_t, attn = (t.to(device) for t in (input_ids, stream_index, label_t, attn))

    embeds = embed(input_ids)
    for s, st in enumerate(streams):
        where = stream_index == s
        valid = torch.arange(st.features.shape[1], device=device)[None] < st.lengths.to(device)[:, None]
        n_place, n_feat = int(where.sum()), int(valid.sum())
        if n_place != n_feat:
            raise ValueError(f"stream {s}: {n_place} placeholders but {n_feat} features")
        feats = st.features[valid].to(embeds.dtype)  # (N, H) in sample-major, time order
        embeds = embeds.masked_scatter(where[..., None], feats)
    position_ids = (attn.cumsum(1) - 1).clamp(min=0)
    start = torch.tensor([s_max - len(r) for r in rows], device=device)
    return Sequences(
        embeds=embeds,
        attention_mask=attn,
        position_ids=position_ids,
        labels=label_t if target_ids is not None else None,
        input_ids=input_ids,
        stream_index=stream_index,
        start=start,
    )
