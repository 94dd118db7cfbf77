"""How much phonetic information the synthetic mouth crops carry: a frame-level viseme probe.

Utterances are synthesised and rendered exactly as the corpus generator does (espeak-ng phoneme timings →
co-articulated viseme track → 96×96 gray mouth crops with each speaker's appearance and per-utterance head
motion, lighting and noise), and each frame is labelled with the viseme class being articulated at its
centre (:func:`lips.frame_visemes`). A linear classifier on downsampled crops, fitted on training voices
and scored on the held-out voices, says how separable the mouth shapes are to any encoder: if a linear
map cannot tell visemes apart across speakers, no lip-reading front-end will learn them fast.

The probe subtracts each utterance's mean frame first (what a per-utterance normalisation or a temporal
convolution gives any encoder for free: the speaker's static appearance cancels, the movement stays).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from llama_avsr.synth import corpus, grammar, lips, tts

#: probe input: crops downsampled to this (width, height), the mouth and its surroundings
PROBE_SIZE = (32, 24)


@dataclass
class ProbeData:
    """Frames of several utterances. ``x``: (N, 24·32) float32 mean-removed crops; ``y``: (N,) viseme
    class indices (:data:`lips.VISEMES`); ``track``: (N, 5) the renderer's mouth parameters."""

    x: np.ndarray
    y: np.ndarray
    track: np.ndarray


def render_utterances(
    sentences: list[grammar.Sentence], speakers: list[tts.Speaker], seed: int = 0
) -> ProbeData:
    """Speak and render each sentence with the speakers in turn, as ``synth`` does for the corpus."""
    xs, ys, tracks = [], [], []
    for i, sentence in enumerate(sentences):
        spk = speakers[i % len(speakers)]
        rng = np.random.default_rng([seed, i])
        speech = tts.synthesize(sentence.spoken, spk.voice, seed=seed + i)
        lead = rng.uniform(0.12, 0.4)
        n = int(np.ceil((lead + speech.duration + rng.uniform(0.12, 0.4)) * corpus.VIDEO_FPS))
        speech = speech.padded(lead, n / corpus.VIDEO_FPS)
        track = lips.viseme_track(speech.phonemes, n, corpus.VIDEO_FPS)
        frames = lips.render_roi(track, corpus.appearance(tts.SPEAKERS.index(spk), seed), rng)
        small = np.stack([cv2.resize(f, PROBE_SIZE, interpolation=cv2.INTER_AREA) for f in frames])
        small = small.reshape(n, -1).astype(np.float32) / 255.0
        xs.append(small - small.mean(axis=0, keepdims=True))
        ys.append(lips.frame_visemes(speech.phonemes, n, corpus.VIDEO_FPS))
        tracks.append(track)
    return ProbeData(np.concatenate(xs), np.concatenate(ys), np.concatenate(tracks))


def fit_linear_probe(train: ProbeData, ridge: float = 1.0) -> np.ndarray:
    """Ridge regression of one-hot viseme classes on the crops (closed form): weights (D + 1, C)."""
    x = np.concatenate([train.x, np.ones((len(train.x), 1), np.float32)], axis=1).astype(np.float64)
    onehot = np.eye(len(lips.VISEMES))[train.y]
    gram = x.T @ x + ridge * np.eye(x.shape[1])
    return np.linalg.solve(gram, x.T @ onehot)


def probe_accuracy(weights: np.ndarray, data: ProbeData) -> float:
    """Frame accuracy of the probe's arg-max class."""
    x = np.concatenate([data.x, np.ones((len(data.x), 1), np.float32)], axis=1)
    return float(np.mean((x @ weights).argmax(axis=1) == data.y))


def majority_accuracy(train: ProbeData, data: ProbeData) -> float:
    """Accuracy of always answering the most frequent training class."""
    return float(np.mean(data.y == np.bincount(train.y).argmax()))
