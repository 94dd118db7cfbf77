"""Babble noise: many synthetic talkers speaking grammar sentences at once, as a 16 kHz mono wav.

The paper's noise augmentation mixes babble into the audio at a chosen SNR; without a user-supplied
noise file the data pipeline calls :func:`default_babble_path`, which makes a 60 s track once and caches
it under ``$LLAMA_AVSR_CACHE`` (default ``~/.cache/llama_avsr``).

There are two tracks, from disjoint sets of talkers: ``train`` (augmentation) and ``eval`` (the noise
of validation and test), so that a noisy test condition is not the noise the model was trained on.
No babble talker has the voice of a corpus speaker (:data:`llama_avsr.synth.tts.SPEAKERS`).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import numpy as np

from llama_avsr.media import SAMPLE_RATE, write_wav
from llama_avsr.synth import grammar, tts

log = logging.getLogger(__name__)

BABBLE_SECONDS = 60.0
BABBLE_VOICES = 16
BABBLE_VERSION = 2
#: the babble tracks; their talkers are disjoint
TRACKS = ("train", "eval")
#: RMS level of the mix (-20 dBFS): loud enough to matter, far from clipping
TARGET_RMS = 0.1

_BASES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan")
_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")


def babble_voices(n: int, track: str = "train", seed: int = 0) -> list[tts.Voice]:
    """The ``n`` talkers of a babble track: distinct accent × variant combinations (with a random speed
    and pitch each), none of them a corpus speaker's voice, and the two tracks drawn from disjoint halves
    of the combinations (split by ``seed``), so no talker is in both."""
    if track not in TRACKS:
        raise ValueError(f"babble track must be one of {TRACKS}, got {track!r}")
    corpus_voices = {s.voice.name for s in tts.SPEAKERS}
    combos = [f"{b}+{v}" for b in _BASES for v in _VARIANTS]
    combos = [c for c in combos if c not in corpus_voices]
    halves = np.random.default_rng([seed, 37]).permutation(len(combos))
    mine = [combos[i] for i in halves[TRACKS.index(track) :: len(TRACKS)]]
    if n > len(mine):
        raise ValueError(f"at most {len(mine)} distinct babble talkers per track, asked for {n}")
    rng = np.random.default_rng([seed, 41, TRACKS.index(track)])
    return [
        tts.Voice(mine[k], int(rng.integers(140, 200)), int(rng.integers(20, 80)), int(rng.integers(30, 80)))
        for k in rng.permutation(len(mine))[:n]
    ]


def _sentences(rng: np.random.Generator, n: int) -> list[str]:
    sents = grammar.make_splits(n, 0, 0, seed=int(rng.integers(1 << 31)))["train"]
    return [s.spoken for s in sents]


def make_babble(
    path: str | Path,
    seconds: float = BABBLE_SECONDS,
    n_voices: int = BABBLE_VOICES,
    seed: int = 0,
    track: str = "train",
) -> Path:
    """Write ``seconds`` of babble from the ``n_voices`` talkers of ``track`` (:func:`babble_voices`)
    to ``path`` (16 kHz mono 16-bit wav, RMS ≈ -20 dBFS), atomically; deterministic in its arguments.
    Returns ``path``."""
    if seconds <= 0 or n_voices < 1:
        raise ValueError("seconds must be > 0 and n_voices >= 1")
    path = Path(path)
    voices = babble_voices(n_voices, track, seed)
    rng = np.random.default_rng([seed, 31, TRACKS.index(track)])
    n = int(round(seconds * SAMPLE_RATE))
    mix = np.zeros(n, np.float64)
    for voice in voices:
        # one talker: sentences back to back with short pauses, started at a random phase of the loop
        stream: list[np.ndarray] = []
        total = 0
        sentences = iter(_sentences(rng, max(4, int(seconds / 2) + 4)))
        while total < n:
            text = next(sentences, None) or _sentences(rng, 1)[0]
            audio = tts.synthesize(text, voice, seed=int(rng.integers(1 << 31))).audio
            audio = audio / (np.sqrt(np.mean(audio**2)) + 1e-8)
            gap = np.zeros(int(rng.uniform(0.05, 0.4) * SAMPLE_RATE), np.float32)
            stream += [audio, gap]
            total += len(audio) + len(gap)
        talker = np.roll(np.concatenate(stream)[:n], int(rng.integers(n)))
        mix += rng.uniform(0.5, 1.0) * talker
    mix -= mix.mean()
    mix *= TARGET_RMS / (np.sqrt(np.mean(mix**2)) + 1e-12)
    peak = np.abs(mix).max()
    if peak > 0.99:
        mix *= 0.99 / peak
    write_wav(path, mix.astype(np.float32), SAMPLE_RATE)
    log.info("babble (%s): %.0f s, %d talkers → %s", track, seconds, n_voices, path)
    return path


def cache_dir() -> Path:
    """``$LLAMA_AVSR_CACHE`` or ``~/.cache/llama_avsr``."""
    return Path(os.environ.get("LLAMA_AVSR_CACHE") or Path.home() / ".cache" / "llama_avsr")


def default_babble_path(track: str = "train") -> Path:
    """Path of the default babble track ``train`` or ``eval``, made on first use (≈ a few seconds) and
    cached.

    Safe when several processes ask at once (e.g. data-loader workers): one makes it under a file lock,
    the others wait and reuse it."""
    root = cache_dir()
    if track not in TRACKS:
        raise ValueError(f"babble track must be one of {TRACKS}, got {track!r}")
    path = root / f"babble-v{BABBLE_VERSION}-{track}-{int(BABBLE_SECONDS)}s-{BABBLE_VOICES}v.wav"
    if path.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".babble.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not path.is_file():
                log.info("making the default %s babble noise (once) at %s", track, path)
                make_babble(path, BABBLE_SECONDS, BABBLE_VOICES, seed=0, track=track)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path
