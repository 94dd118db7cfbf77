"""Collate samples into a :class:`Batch`: pad modality tensors, tokenize transcripts once per batch.

The prompt, placeholders and special tokens are laid out by the model's sequence builder (one path for
training and generation, see ``models/splice.py``) because the number of placeholders depends on the
encoder output lengths; the collator supplies the transcript token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from llama_avsr.data.batch import PAD_LABEL, Batch


def pad_stack(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad along dim 0 with zeros: list of (T_i, …) → ((B, T_max, …), lengths (B,))."""
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    out = tensors[0].new_zeros((len(tensors), int(lengths.max()), *tensors[0].shape[1:]))
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out, lengths


class Collator:
    """Samples (dicts with ``id``, ``text`` and modality tensors) → :class:`Batch`.

    tokenizer: the LLM tokenizer; transcripts are encoded without special tokens and EOS is appended.
    modalities: which modality fields to collate (others in the samples are ignored).
    with_targets: tokenize transcripts (training / validation); off for pure inference.
    """

    def __init__(self, tokenizer: Any, modalities: Sequence[str], with_targets: bool = True) -> None:
        self.tokenizer = tokenizer
        self.modalities = tuple(modalities)
        self.with_targets = with_targets
        self.eos_id = tokenizer.eos_token_id
        if with_targets and self.eos_id is None:
            raise ValueError("the tokenizer has no EOS token; transcripts need one to end")

    def __call__(self, samples: Sequence[dict[str, Any]]) -> Batch:
        batch = Batch(
            ids=[s["id"] for s in samples],
            texts=[s.get("text", "") for s in samples],
            blanked=[tuple(s.get("blanked", ())) for s in samples],
        )
        for m in self.modalities:
            batch.inputs[m], batch.lengths[m] = pad_stack([s[m] for s in samples])
        if self.with_targets:
            enc = self.tokenizer(batch.texts, add_special_tokens=False)["input_ids"]
            seqs = [torch.tensor([*ids, self.eos_id], dtype=torch.long) for ids in enc]
            targets = torch.full((len(seqs), max(len(s) for s in seqs)), PAD_LABEL, dtype=torch.long)
            for i, s in enumerate(seqs):
                targets[i, : len(s)] = s
            batch.target_ids = targets
        return batch
