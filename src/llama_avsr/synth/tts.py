"""Speech synthesis with libespeak-ng (through ctypes), with per-phoneme timings aligned to the audio.

espeak-ng runs in synchronous mode with phoneme events enabled: its synth callback receives the
audio in chunks together with events whose ``sample`` field gives the position of each phoneme and word
start in the generated audio (``audio_position`` gives the same in milliseconds).  The library keeps
global state, so there is one engine per process (:func:`engine`).

Speakers are espeak-ng voice settings (voice + variant, speed, pitch, pitch range); the table
:data:`SPEAKERS` fixes which ones are used for training and which are held out for the validation
and for the test split.
"""

from __future__ import annotations

import _ctypes
import ctypes
import ctypes.util
import logging
import os
import threading
from dataclasses import asdict, dataclass

import numpy as np

from llama_avsr.media import SAMPLE_RATE, resample

log = logging.getLogger(__name__)

# speak_lib.h (API revision 12, espeak-ng 1.51)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PAUSE = "_"


class EspeakError(RuntimeError):
    """libespeak-ng is missing or failed."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice setting: ``name`` like ``en-us+f3`` (voice + variant), ``rate`` in words per
    minute (80–450), ``pitch`` and ``pitch_range`` in 0–100 (50 = normal)."""

    name: str
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: an id (the folder name in the corpus), a voice, and the one split it is held
    out for (``val`` or ``test``: it speaks only there, never in training), or ``None`` for a training
    voice (heard in training, and also in validation and test)."""

    id: str
    voice: Voice
    held_out: str | None = None

    def __post_init__(self) -> None:
        if self.held_out not in (None, "val", "test"):
            raise ValueError(f"speaker {self.id}: held_out must be 'val', 'test' or None")

    @property
    def test_only(self) -> bool:
        return self.held_out == "test"

    def as_dict(self) -> dict:
        return {"id": self.id, **asdict(self.voice), "held_out": self.held_out}


#: speakers of the synthetic corpus. Held-out voices speak in one evaluation split only, and the two
#: splits hold out different voices: settings chosen on validation are not chosen on the test voices.
SPEAKERS: tuple[Speaker, ...] = (
    Speaker("spk00", Voice("en-us", 165, 45, 55)),
    Speaker("spk01", Voice("en-us+f3", 170, 60, 60)),
    Speaker("spk02", Voice("en+m3", 160, 40, 45)),
    Speaker("spk03", Voice("en-gb-x-rp+f2", 175, 65, 50)),
    Speaker("spk04", Voice("en-us+m5", 180, 35, 40)),
    Speaker("spk05", Voice("en+f4", 155, 70, 65)),
    Speaker("spk06", Voice("en-gb-x-rp+m1", 170, 50, 50)),
    Speaker("spk07", Voice("en-us+f1", 185, 55, 70)),
    Speaker("spk08", Voice("en-029+m2", 160, 45, 50)),
    Speaker("spk09", Voice("en-us+m7", 175, 30, 35)),
    # held out for test: an accent and a variant never heard in training
    Speaker("spk10", Voice("en-gb-scotland+f5", 165, 60, 55), held_out="test"),
    Speaker("spk11", Voice("en-us+m4", 190, 42, 60), held_out="test"),
    # held out for validation: accents / variants heard neither in training nor in test
    Speaker("spk12", Voice("en-gb-x-gbcwmd+m6", 170, 38, 45), held_out="val"),
    Speaker("spk13", Voice("en-gb-x-gbclan+f1", 180, 66, 62), held_out="val"),
)


def speakers_for(split: str) -> list[Speaker]:
    """Speakers used in a split: training uses the training voices; validation and test use them too
    (seen voices) plus their own held-out voices."""
    return [s for s in SPEAKERS if s.held_out is None or s.held_out == split]


@dataclass
class Speech:
    """Synthesised speech. ``audio``: (T,) float32 at ``sample_rate``; ``phonemes``: (symbol, start,
    end) in seconds, contiguous, covering speech and pauses (``_``); ``words``: (index in the text,
    start) in seconds."""

    audio: np.ndarray
    sample_rate: int
    phonemes: list[tuple[str, float, float]]
    words: list[tuple[int, float]]

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    def padded(self, before: float, total: float) -> Speech:
        """Silence ``before`` seconds in front and up to ``total`` seconds overall (times shifted;
        leading/trailing silence appear as pause phonemes)."""
        n_before = int(round(before * self.sample_rate))
        n_total = max(int(round(total * self.sample_rate)), n_before + len(self.audio))
        audio = np.zeros(n_total, np.float32)
        audio[n_before : n_before + len(self.audio)] = self.audio
        shift = n_before / self.sample_rate
        end = n_total / self.sample_rate
        ph = [(p, s + shift, e + shift) for p, s, e in self.phonemes]
        if ph and ph[0][0].startswith(_PAUSE):
            ph[0] = (ph[0][0], 0.0, ph[0][2])
        elif shift > 0:
            ph.insert(0, (_PAUSE, 0.0, ph[0][1] if ph else shift))
        if ph and ph[-1][2] < end:
            if ph[-1][0].startswith(_PAUSE):
                ph[-1] = (ph[-1][0], ph[-1][1], end)
            else:
                ph.append((_PAUSE, ph[-1][2], end))
        words = [(i, s + shift) for i, s in self.words]
        return Speech(audio, self.sample_rate, ph, words)


class Espeak:
    """Speech synthesis with libespeak-ng, deterministic in its inputs.

    libespeak-ng keeps synthesis state in C statics that no API call resets (pitch-flutter phase,
    gain control, …) and draws breath noise from libc's ``rand()``; the same text then sounds slightly
    different depending on what was spoken before.  To make every utterance a pure function of
    (text, voice, seed) — whatever the order or the worker process — each call loads a fresh copy of the
    library (``dlopen``/``dlclose``, ≈3 ms) and seeds ``rand()``. If something else in the process keeps
    libespeak-ng loaded, one shared instance is used instead (with a warning: not bit-reproducible).
    """

    def __init__(self) -> None:
        self._path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        self._libc = ctypes.CDLL(None)
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int, str]] = []
        self._callback = _SynthCallback(self._on_synth)  # keep a reference: C holds the pointer
        self._lock = threading.Lock()
        self._shared: ctypes.CDLL | None = None
        lib = self._acquire()
        self.native_rate = self._rate
        self._release(lib)

    def _resident(self) -> bool:
        """Whether libespeak-ng is already mapped into this process (loaded by someone else)."""
        try:
            lib = ctypes.CDLL(self._path, mode=os.RTLD_NOLOAD)
        except OSError:
            return False
        _ctypes.dlclose(lib._handle)  # NOLOAD took a reference too
        return True

    def _load(self) -> ctypes.CDLL:
        try:
            lib = ctypes.CDLL(self._path)
        except OSError as e:
            raise EspeakError(
                f"libespeak-ng not found ({e}); install espeak-ng (apt-get install espeak-ng)"
            ) from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise EspeakError("espeak_Initialize failed (espeak-ng-data missing?)")
        lib.espeak_SetSynthCallback(self._callback)
        self._rate = rate
        return lib

    def _acquire(self) -> ctypes.CDLL:
        """A freshly loaded and initialised library — or, when another user keeps it loaded in this
        process (then dlclose cannot reset it, and re-initialising after espeak_Terminate hangs), one
        shared instance initialised once."""
        if self._shared is not None:
            return self._shared
        resident = self._resident()
        lib = self._load()
        if resident:
            log.warning(
                "libespeak-ng is already loaded in this process: synthesis may not be exactly reproducible"
            )
            self._shared = lib
        return lib

    def _release(self, lib: ctypes.CDLL) -> None:
        if lib is not self._shared:
            lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)

    def _on_synth(self, wav, n, events) -> int:  # noqa: ANN001 - ctypes signature
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type in (_EVENT_PHONEME, _EVENT_WORD):
                name = (
                    bytes(e.id.string).split(b"\0")[0].decode("utf-8", "replace")
                    if e.type == _EVENT_PHONEME
                    else ""
                )
                self._events.append((e.type, e.sample, e.audio_position, e.text_position, name))
            i += 1
        return 0

    def _run(
        self, text: str, voice: Voice, seed: int
    ) -> tuple[list[np.ndarray], list[tuple[int, int, int, int, str]]]:
        with self._lock:
            lib = self._acquire()
            try:
                if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                    raise EspeakError(f"espeak-ng has no voice {voice.name!r}")
                lib.espeak_SetParameter(_PARAM_RATE, int(voice.rate), 0)
                lib.espeak_SetParameter(_PARAM_PITCH, int(voice.pitch), 0)
                lib.espeak_SetParameter(_PARAM_RANGE, int(voice.pitch_range), 0)
                lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
                self._chunks, self._events = [], []
                self._libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))
                data = text.encode("utf-8")
                err = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
                if err != 0:
                    raise EspeakError(f"espeak_Synth failed ({err}) on {text!r}")
                return self._chunks, self._events
            finally:
                self._release(lib)

    def synth(self, text: str, voice: Voice, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> Speech:
        """Speak ``text`` with ``voice``; the audio is resampled from espeak-ng's native 22.05 kHz to
        ``sample_rate``. Phoneme and word times are in seconds from the start of the audio. The result
        depends only on the arguments (``seed`` drives espeak-ng's breath noise)."""
        chunks, events = self._run(text, voice, seed)
        native = np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(0, np.float32)
        dur = len(native) / self.native_rate
        # word index of each character position (espeak-ng counts text positions from 1)
        char_word = np.cumsum([0] + [c == " " for c in text])
        n_words = len(text.split())
        phonemes: list[tuple[str, float]] = []
        words: list[tuple[int, float]] = []
        for kind, sample, ms, pos, name in events:
            # ``sample`` is exact; fall back to the millisecond position if a build reports it differently
            t = sample / self.native_rate if abs(sample / self.native_rate - ms / 1000) < 0.02 else ms / 1000
            t = min(max(t, 0.0), dur)
            if kind == _EVENT_PHONEME:
                phonemes.append((name, t))
            elif 0 < pos <= len(text) and char_word[pos - 1] < n_words and text[pos - 1] != " ":
                words.append((int(char_word[pos - 1]), t))
        if phonemes and phonemes[0][1] > 0:  # the silence espeak-ng puts before the first phoneme
            phonemes.insert(0, (_PAUSE, 0.0))
        spans = []
        for k, (name, start) in enumerate(phonemes):
            end = phonemes[k + 1][1] if k + 1 < len(phonemes) else dur
            if end > start or k + 1 == len(phonemes):
                spans.append((name, start, max(end, start)))
        return Speech(resample(native, self.native_rate, sample_rate), sample_rate, spans, words)


_ENGINE: Espeak | None = None


def engine() -> Espeak:
    """The process's espeak-ng engine (created on first use)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
        log.debug("libespeak-ng initialised (%d Hz)", _ENGINE.native_rate)
    return _ENGINE


def available() -> bool:
    """Whether libespeak-ng can be loaded and initialised here."""
    try:
        engine()
    except EspeakError:
        return False
    return True


def synthesize(text: str, voice: Voice, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> Speech:
    """Speak ``text`` with ``voice`` using the process's engine; see :meth:`Espeak.synth`."""
    return engine().synth(text, voice, sample_rate, seed)
