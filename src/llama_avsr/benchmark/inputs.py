"""Synthetic benchmark inputs of chosen lengths: espeak-ng speech (sentences of the synthetic corpus's
grammar, joined up to the length) when available, else noise; random mouth-crop video."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
VIDEO_FPS = 25
CROP = 88


class Utterances:
    """Makes samples (dicts the :class:`~llama_avsr.data.collate.Collator` takes) of given lengths.

    speech: use espeak-ng (falls back to noise when it is not installed).
    modalities: fields to produce (``audio``, ``video``).
    """

    def __init__(
        self, modalities: Sequence[str], speech: bool = True, seed: int = 0, words_per_second: float = 2.5
    ) -> None:
        self.modalities = list(modalities)
        self.rng = np.random.default_rng(seed)
        self.words_per_second = words_per_second
        self._sentences: list[tuple[np.ndarray, str]] = []
        self._next = 0
        self.speech = speech and self._speech_available()

    @staticmethod
    def _speech_available() -> bool:
        try:
            from llama_avsr.synth import tts

            return tts.available()
        except Exception:  # a missing shared library or a broken install: fall back to noise
            return False

    def _sentence(self) -> tuple[np.ndarray, str]:
        """The next synthesised sentence (cycling through a fixed set of 64)."""
        if not self._sentences:
            from llama_avsr.synth import tts
            from llama_avsr.synth.grammar import make_splits

            voices = [s.voice for s in tts.SPEAKERS]
            for i, s in enumerate(make_splits(64, 0, 0, seed=1)["train"]):
                speech = tts.synthesize(s.spoken, voices[i % len(voices)], SAMPLE_RATE, seed=i)
                self._sentences.append((speech.audio.astype(np.float32), s.text))
        s = self._sentences[self._next % len(self._sentences)]
        self._next += 1
        return s

    def _audio(self, seconds: float) -> tuple[np.ndarray, str]:
        n = max(1, int(round(seconds * SAMPLE_RATE)))
        if not self.speech:
            words = _vocabulary()
            k = max(1, int(round(seconds * self.words_per_second)))
            text = " ".join(words[int(i)] for i in self.rng.integers(len(words), size=k))
            return (0.1 * self.rng.standard_normal(n)).astype(np.float32), text
        parts, texts, total = [], [], 0
        while total < n:
            audio, text = self._sentence()
            parts.append(audio)
            texts.append(text)
            total += len(audio)
        audio = np.concatenate(parts)[:n]
        # the words actually kept, roughly in proportion to the audio kept
        words = " ".join(texts).split()
        keep = max(1, int(round(len(words) * n / total)))
        return audio, " ".join(words[:keep])

    def make(self, seconds: float, n: int, jitter: float = 0.0) -> list[dict[str, Any]]:
        """``n`` samples of ``seconds`` each (± ``jitter`` · seconds, uniformly)."""
        out = []
        for i in range(n):
            s = seconds * (1 + jitter * (2 * self.rng.random() - 1)) if jitter else seconds
            audio, text = self._audio(s)
            sample: dict[str, Any] = {"id": f"bench-{seconds:g}s-{i}", "text": text}
            if "audio" in self.modalities:
                # the waveform layer norm of the data pipeline (Whisper / WavLM input)
                a = torch.from_numpy(audio)
                sample["audio"] = (a - a.mean()) / (a.std() + 1e-8)
            if "video" in self.modalities:
                frames = max(1, int(round(len(audio) / SAMPLE_RATE * VIDEO_FPS)))
                sample["video"] = torch.from_numpy(
                    self.rng.standard_normal((frames, 1, CROP, CROP)).astype(np.float32)
                )
            out.append(sample)
        return out


def _vocabulary() -> list[str]:
    """The synthetic corpus's words (a few fixed ones where the synth package cannot load, e.g. no PyAV)."""
    try:
        from llama_avsr.synth.grammar import vocabulary

        return vocabulary()
    except ImportError:
        return "the red box was on the table near the window today and bob moved it".split()
