"""Shared fixtures.

Model cache: every test session runs with ``LLAMA_AVSR_CACHE`` pointing at a test-only folder, so tests
never read or write ``~/.cache``.  The folder is pytest's own cache (``.pytest_cache/d/llama_avsr``, kept
between runs and validated by the conversion markers, wiped by ``--cache-clear``), or a session
temporary directory when the cache plugin is off; ``LLAMA_AVSR_TEST_CACHE`` overrides both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

ESPEAK_RATE = 22_050
SAMPLE_RATE = 16_000


@pytest.fixture(scope="session", autouse=True)
def llama_avsr_cache(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The session's ``LLAMA_AVSR_CACHE`` (converted embedded models live under ``models/``)."""
    override = os.environ.get("LLAMA_AVSR_TEST_CACHE")
    cache = getattr(request.config, "cache", None)
    if override:
        root = Path(override)
    elif cache is not None:
        root = Path(cache.mkdir("llama_avsr"))
    else:
        root = tmp_path_factory.mktemp("llama_avsr_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLAMA_AVSR_CACHE", str(root))
        yield root


def _embedded(name: str, kind: str) -> Path:
    from llama_avsr.hub import ModelNotAvailable, resolve

    try:
        path = resolve(name, kind)
    except ModelNotAvailable as e:
        pytest.skip(f"embedded model {name!r} not installed: {e}")
    assert isinstance(path, Path)
    return path


@pytest.fixture(scope="session")
def smollm2_dir(llama_avsr_cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face directory (converted once per cache)."""
    return _embedded("smollm2-135m", "llm")


@pytest.fixture(scope="session")
def whisper_tiny_dir(llama_avsr_cache: Path) -> Path:
    """Whisper tiny.en as a Hugging Face directory (converted once per cache)."""
    return _embedded("whisper-tiny.en", "whisper")


@pytest.fixture(scope="session")
def whisper_base_dir(llama_avsr_cache: Path) -> Path:
    """Whisper base (multilingual) as a Hugging Face directory (converted once per cache)."""
    return _embedded("whisper-base", "whisper")


@pytest.fixture(scope="session")
def speak(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], np.ndarray]:
    """``speak(text)`` → 16 kHz mono float32 speech from Debian's ``espeak-ng`` (skips if it is missing)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    folder = tmp_path_factory.mktemp("espeak")
    counter = iter(range(1_000_000))

    def synth(text: str) -> np.ndarray:
        wav = folder / f"utt{next(counter)}.wav"
        subprocess.run([exe, "-w", str(wav), text], check=True, capture_output=True)
        rate, samples = wavfile.read(wav)
        assert rate == ESPEAK_RATE, f"espeak-ng wrote {rate} Hz"
        audio = samples.astype(np.float32) / 32768.0
        g = np.gcd(SAMPLE_RATE, ESPEAK_RATE)
        return resample_poly(audio, SAMPLE_RATE // g, ESPEAK_RATE // g).astype(np.float32)

    return synth
