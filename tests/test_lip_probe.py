"""The synthetic mouth crops carry the phonetic information lip reading needs (issue 14).

A frame-level linear viseme probe, fitted on training voices and scored on held-out voices, must beat the
majority class by a wide margin; and the renderer must draw the viseme classes the way real mouths differ:
closed lips for p/b/m, a large dark opening with teeth for open vowels, a narrow mouth for rounded ones,
a wide one for spread ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from llama_avsr.synth import grammar, lips, tts

needs_espeak = pytest.mark.skipif(
    not tts.available(), reason="libespeak-ng is not installed (apt-get install espeak-ng)"
)


def _still(app: lips.Appearance, viseme: str) -> np.ndarray:
    """A 96×96 frame of one viseme's target held for a while (no head motion within the frames)."""
    target = np.asarray(lips._V[viseme][0], np.float32)
    frames = lips.render_roi(np.tile(target, (3, 1)), app, np.random.default_rng(0))
    return frames[1].astype(np.float32)


def _mouth_stats(app: lips.Appearance, viseme: str) -> tuple[float, float, float]:
    """Dark-opening area, bright (teeth) area and mouth width in pixels of one viseme's still frame."""
    img = _still(app, viseme)
    dark = img < 0.5 * (app.cavity + min(app.lip, app.tongue) * 0.88)
    bright = img > 0.5 * (app.teeth + max(app.skin, app.lip * 1.12))
    cy = int(round(app.center[1]))
    row = img[cy - 1 : cy + 2].mean(axis=0)  # through the mouth's centre line
    skin = np.median(np.concatenate([row[:10], row[-10:]]))
    cols = np.flatnonzero(np.abs(row - skin) > 8)
    width = float(cols[-1] - cols[0]) if len(cols) else 0.0
    return float(dark.sum()), float(bright.sum()), width


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_renderer_draws_visemes_distinctly(seed: int) -> None:
    app = lips.Appearance.sample(np.random.default_rng(seed))
    app = lips.Appearance(**{**app.__dict__, "angle": 0.0, "noise": 0.0, "light": 0.0})
    stats = {v: _mouth_stats(app, v) for v in ("bmp", "a", "A", "i", "u", "w", "fv", "sil")}
    # lip closure: no opening at all for p/b/m, a large one for open vowels
    assert stats["bmp"][0] == 0
    assert stats["a"][0] > 150 and stats["A"][0] > 150
    # rounding/protrusion narrows the mouth; spreading widens it
    assert stats["u"][2] < stats["i"][2] - 6
    assert stats["w"][2] < stats["i"][2] - 6
    # open vowels show teeth, a closed mouth none
    assert stats["a"][1] > 10 and stats["bmp"][1] == 0
    # every pair of classes from different groups differs visibly: mean absolute difference over the
    # 70×40 mouth box (measured 2.7–8 gray levels for the closest pairs, bmp/w and bmp/fv, on six speakers)
    groups = [("bmp",), ("a", "A"), ("i",), ("u", "w"), ("fv",)]
    frames = {v: _still(app, v) for g in groups for v in g}
    cy, cx = int(app.center[1]), int(app.center[0])
    box = (slice(cy - 20, cy + 20), slice(cx - 35, cx + 35))
    for i, g in enumerate(groups):
        for h in groups[i + 1 :]:
            for a in g:
                for b in h:
                    assert np.abs(frames[a][box] - frames[b][box]).mean() > 2.0, (a, b)
    # the finer cues real lip readers use (measured 2026-12-01 on six speakers, before → after the press,
    # tuck and tongue-tip parameters: p/b/m vs rest 0.2–0.4 → 2.6–6.4, f/v vs s/z 0.7–1.4 → 1.7–4.3,
    # th vs t/d/n 0.5–1.3 → 1.4–3.9 gray levels): compressed lips at p/b/m, not relaxed ones; the lower lip
    # tucked under the upper teeth at f/v, not two rows of teeth as at s/z; the tongue tip between the
    # teeth at th
    for (a, b), least in {("bmp", "sil"): 2.0, ("fv", "sz"): 1.5, ("th", "tdn"): 1.2}.items():
        fa, fb = _still(app, a), _still(app, b)
        assert np.abs(fa[box] - fb[box]).mean() > least, (a, b)


def test_frame_visemes_follow_phoneme_timings() -> None:
    phonemes = [("_", 0.0, 0.1), ("m", 0.1, 0.2), ("aI", 0.2, 0.4), ("_", 0.4, 0.5)]
    labels = [lips.VISEMES[k] for k in lips.frame_visemes(phonemes, 14, 25.0)]
    assert labels[:2] == ["sil", "sil"]
    assert labels[3:5] == ["bmp", "bmp"]
    assert labels[5:7] == ["a", "a"] and labels[8:10] == ["I", "I"]
    assert labels[10:] == ["sil"] * 4  # past the last phoneme: silence


@needs_espeak
def test_linear_viseme_probe_generalises_to_held_out_voices() -> None:
    """Measured 2026-11-30 (60 sentences by the 10 training voices, 20 by the 2 held-out voices,
    ≈4.2 k / 1.5 k frames): 40 % held-out accuracy, majority class 21 %; 37.7 % on 2026-12-01 after the
    press / tuck / tongue-tip cues, which a linear map of 32×24 crops barely sees (the renderer's own
    parameters separate the classes better: 65 → 71 %, docs/results.md). The threshold leaves room for
    renderer changes but fails if the mouth shapes stop carrying the visemes across speakers."""
    from llama_avsr.synth import probe

    splits = grammar.make_splits(60, 0, 20, seed=0)
    seen = [s for s in tts.SPEAKERS if not s.test_only]
    held = [s for s in tts.SPEAKERS if s.test_only]
    train = probe.render_utterances(splits["train"], seen)
    test = probe.render_utterances(splits["test"], held, seed=1)
    weights = probe.fit_linear_probe(train)
    acc, majority = probe.probe_accuracy(weights, test), probe.majority_accuracy(train, test)
    assert acc >= 0.33, acc
    assert acc >= 1.5 * majority, (acc, majority)
