"""Lip animation from phoneme timings, drawn as a mouth-region video (and composited into a face).

Pipeline: phonemes with times → viseme targets (opening, width, rounding/protrusion, teeth, tongue, lip
compression, lower-lip tuck per phoneme class; diphthongs glide between two targets) → co-articulated trajectories (dominance-weighted
blending in the manner of Cohen & Massaro: bilabial closures and labiodentals dominate their
neighbours, /h k g/ mostly take their neighbours' shape) averaged over each frame's exposure →
frames drawn with OpenCV (lip polygons with shading, dark cavity, teeth bands, tongue) at 2× and
downsampled for anti-aliasing.

Per-speaker :class:`Appearance` (mouth size, lip thickness, gray levels of skin/lips/cavity/teeth,
position, rotation, lighting, noise) and per-utterance head jitter keep lip reading learnable but not
trivial.  Shapes: a track is (F, 7) float32 with the columns of :data:`PARAMS`; ROI videos are
(F, 96, 96) uint8 gray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import cv2
import numpy as np

#: columns of a viseme track
PARAMS = ("open", "width", "round", "teeth", "tongue", "press", "tuck")

ROI_SIZE = 96
_SS = 2  # supersampling factor for anti-aliased drawing
_SHIFT = 2  # fixed-point bits for sub-pixel polygon vertices
_N_PTS = 25  # points per lip contour

# Viseme targets: (open, width, round, teeth, tongue, press, tuck), and the dominance (how strongly a class imposes
# its shape on its neighbours) with its time constant in seconds.
_V = {
    "sil": ((0.02, 0.50, 0.15, 0.0, 0.0, 0.0, 0.0), 1.5, 0.06),
    "bmp": ((0.00, 0.48, 0.20, 0.0, 0.0, 1.0, 0.0), 6.0, 0.035),
    "fv": ((0.10, 0.50, 0.05, 1.0, 0.0, 0.0, 1.0), 3.0, 0.035),
    "th": ((0.24, 0.55, 0.05, 0.8, 1.0, 0.0, 0.0), 1.5, 0.035),
    "tdn": ((0.22, 0.62, 0.10, 0.8, 0.35, 0.0, 0.0), 0.5, 0.035),
    "sz": ((0.10, 0.68, 0.05, 1.0, 0.0, 0.0, 0.0), 1.2, 0.035),
    "l": ((0.30, 0.58, 0.10, 0.6, 0.8, 0.0, 0.0), 0.5, 0.035),
    "sh": ((0.18, 0.32, 0.80, 0.8, 0.0, 0.0, 0.0), 2.0, 0.045),
    "r": ((0.20, 0.36, 0.65, 0.4, 0.1, 0.0, 0.0), 1.0, 0.045),
    "w": ((0.07, 0.20, 1.00, 0.0, 0.0, 0.0, 0.0), 3.0, 0.045),
    "j": ((0.18, 0.80, 0.00, 0.7, 0.2, 0.0, 0.0), 1.0, 0.035),
    "kg": ((0.33, 0.55, 0.10, 0.4, 0.2, 0.0, 0.0), 0.35, 0.03),
    "h": ((0.40, 0.55, 0.10, 0.3, 0.0, 0.0, 0.0), 0.15, 0.03),
    "a": ((0.85, 0.68, 0.05, 0.5, 0.2, 0.0, 0.0), 1.0, 0.06),
    "A": ((0.95, 0.55, 0.15, 0.3, 0.1, 0.0, 0.0), 1.0, 0.06),
    "0": ((0.78, 0.42, 0.50, 0.2, 0.1, 0.0, 0.0), 1.0, 0.06),
    "V": ((0.62, 0.55, 0.10, 0.4, 0.1, 0.0, 0.0), 1.0, 0.06),
    "E": ((0.55, 0.76, 0.00, 0.7, 0.2, 0.0, 0.0), 1.0, 0.06),
    "I": ((0.33, 0.80, 0.00, 0.8, 0.2, 0.0, 0.0), 1.0, 0.06),
    "i": ((0.24, 0.92, 0.00, 0.9, 0.2, 0.0, 0.0), 1.2, 0.06),
    "@": ((0.38, 0.58, 0.10, 0.5, 0.1, 0.0, 0.0), 0.7, 0.05),
    "3": ((0.40, 0.48, 0.40, 0.5, 0.1, 0.0, 0.0), 1.0, 0.06),
    "O": ((0.58, 0.32, 0.85, 0.2, 0.0, 0.0, 0.0), 1.2, 0.06),
    "U": ((0.32, 0.32, 0.80, 0.3, 0.0, 0.0, 0.0), 1.2, 0.06),
    "u": ((0.22, 0.20, 1.00, 0.1, 0.0, 0.0, 0.0), 1.5, 0.06),
}

# espeak-ng phoneme names (English) → one or two viseme classes (two = a glide within the phoneme)
_PHONEME_VISEMES: dict[str, tuple[str, ...]] = {
    "_": ("sil",), "_:": ("sil",), "_!": ("sil",), "_|": ("sil",), ";": ("h",),
    "p": ("bmp",), "b": ("bmp",), "m": ("bmp",),
    "f": ("fv",), "v": ("fv",),
    "T": ("th",), "D": ("th",),
    "t": ("tdn",), "d": ("tdn",), "n": ("tdn",), "t#": ("tdn",), "t2": ("tdn",), "t[": ("tdn",), "?": ("kg",),
    "s": ("sz",), "z": ("sz",),
    "l": ("l",), "l/": ("l",), "L": ("l",),
    "S": ("sh",), "Z": ("sh",), "tS": ("sh",), "dZ": ("sh",),
    "r": ("r",), "r-": ("r",), "*": ("tdn",),
    "w": ("w",), "w#": ("w",), "W": ("w",),
    "j": ("j",),
    "k": ("kg",), "g": ("kg",), "N": ("kg",), "x": ("kg",),
    "h": ("h",),
    "a": ("a",), "aa": ("a",), "a#": ("a",), "A:": ("A",), "A@": ("A", "@"), "A": ("A",),
    "0": ("0",), "V": ("V",), "VR": ("V", "r"),
    "E": ("E",), "e": ("E",), "e@": ("E", "@"), "eI": ("E", "I"),
    "I": ("I",), "I2": ("I",), "I#": ("I",), "IR": ("I", "r"), "i": ("I",), "i:": ("i",),
    "i@": ("I", "@"), "i@3": ("I", "@"),
    "@": ("@",), "@2": ("@",), "@5": ("@",), "@L": ("@", "l"), "@-": ("@",), "3": ("@",), "3:": ("3",),
    "O:": ("O",), "O@": ("O", "@"), "O2": ("O",), "O": ("O",), "o@": ("O", "@"), "OI": ("O", "I"),
    "oU": ("@", "U"), "o": ("O",), "U": ("U",), "U@": ("U", "@"), "u:": ("u",), "u": ("u",),
    "aI": ("a", "I"), "aI2": ("a", "I"), "aI@": ("a", "@"), "aU": ("a", "U"), "aU@": ("a", "@"),
}  # fmt: skip

_FIRST_CHAR = {
    "a": "a", "A": "A", "0": "0", "V": "V", "E": "E", "e": "E", "I": "I", "i": "i", "@": "@", "3": "3",
    "O": "O", "o": "O", "U": "U", "u": "u", "p": "bmp", "b": "bmp", "m": "bmp", "f": "fv", "v": "fv",
    "t": "tdn", "d": "tdn", "n": "tdn", "s": "sz", "z": "sz", "l": "l", "r": "r", "w": "w", "j": "j",
    "k": "kg", "g": "kg", "N": "kg", "h": "h", "S": "sh", "Z": "sh", "T": "th", "D": "th",
}  # fmt: skip


def visemes_of(phoneme: str) -> tuple[str, ...]:
    """Viseme classes of an espeak-ng phoneme name (unknown names fall back on their first letter)."""
    if phoneme in _PHONEME_VISEMES:
        return _PHONEME_VISEMES[phoneme]
    return (_FIRST_CHAR.get(phoneme[:1], "@"),) if phoneme else ("sil",)


def _keyframes(
    phonemes: list[tuple[str, float, float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Targets (K, 7), centre times (K,), dominance (K,) and time constants (K,) of the phonemes."""
    targets, times, dom, tau = [], [], [], []
    for name, start, end in phonemes:
        classes = visemes_of(name)
        d = max(end - start, 1e-3)
        if classes == ("sil",) and d > 0.16:
            # a long pause: the mouth settles to rest and stays there
            at = (start + 0.07, end - 0.07)
            classes = ("sil", "sil")
        elif len(classes) == 2:
            at = (start + 0.3 * d, start + 0.85 * d)
        else:
            at = (start + 0.5 * d,)
        for c, t in zip(classes, at, strict=True):
            target, a, tc = _V[c]
            targets.append(target)
            times.append(t)
            dom.append(a)
            tau.append(tc)
    if not targets:
        target, a, tc = _V["sil"]
        return np.array([target], np.float32), np.zeros(1), np.array([a]), np.array([tc])
    return np.array(targets, np.float32), np.array(times), np.array(dom), np.array(tau)


def viseme_track(phonemes: list[tuple[str, float, float]], n_frames: int, fps: float = 25.0) -> np.ndarray:
    """Co-articulated mouth parameters at each frame: (F, 7) in [0, 1], columns :data:`PARAMS`.

    ``phonemes`` are (espeak-ng name, start s, end s). Each frame integrates its 1/fps exposure (four
    sub-samples), as a camera does."""
    targets, centres, dom, tau = _keyframes(phonemes)
    sub = (np.arange(n_frames)[:, None] + (np.arange(4)[None, :] + 0.5) / 4) / fps  # (F, 4)
    t = sub.reshape(-1, 1)
    w = dom[None, :] * np.exp(-((np.abs(t - centres[None, :]) / tau[None, :]) ** 1.3))  # (F·4, K)
    w += 1e-12
    track = (w @ targets) / w.sum(axis=1, keepdims=True)
    return track.reshape(n_frames, 4, len(PARAMS)).mean(axis=1).astype(np.float32)


@dataclass(frozen=True)
class Appearance:
    """How a speaker's mouth region looks (gray levels 0–255, sizes in pixels of a 96×96 ROI)."""

    skin: float = 150.0
    lip: float = 115.0
    cavity: float = 30.0
    teeth: float = 205.0
    tongue: float = 95.0
    mouth_halfwidth: float = 26.0
    lip_thickness: float = 1.0
    open_gain: float = 1.0
    center: tuple[float, float] = (48.0, 50.0)
    angle: float = 0.0
    corner_droop: float = 0.0
    nostrils: float = 0.5
    light: float = 0.15
    noise: float = 2.5

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Appearance:
        """A random but plausible appearance."""
        skin = rng.uniform(85, 190)
        lip = skin - rng.uniform(14, 50)
        return cls(
            skin=skin,
            lip=lip,
            cavity=rng.uniform(12, 50),
            teeth=min(250.0, max(skin, lip + 60) + rng.uniform(0, 40)),
            tongue=lip - rng.uniform(5, 30),
            mouth_halfwidth=rng.uniform(23.0, 29.0),
            lip_thickness=rng.uniform(0.75, 1.3),
            open_gain=rng.uniform(0.8, 1.2),
            center=(48 + rng.uniform(-3, 3), 50 + rng.uniform(-3, 3)),
            angle=rng.uniform(-7, 7),
            corner_droop=rng.uniform(-1.5, 1.5),
            nostrils=rng.uniform(0.0, 1.0),
            light=rng.uniform(0.0, 0.3),
            noise=rng.uniform(0.5, 2.0),
        )


@dataclass(frozen=True)
class MouthShape:
    """Lip contours in pixels relative to the mouth centre (x right, y down), each (..., N, 2) — with a
    leading frame axis when computed for a whole track (index it to get one frame)."""

    upper_outer: np.ndarray
    upper_inner: np.ndarray
    lower_inner: np.ndarray
    lower_outer: np.ndarray
    upper_teeth: np.ndarray
    lower_teeth: np.ndarray
    tongue: np.ndarray  # (..., 4): centre x, centre y, half-axis x, half-axis y
    opening: np.ndarray  # (...,) height of the opening
    front: np.ndarray  # (...,) bool: the tongue tip shows between the teeth (drawn over them)

    def __getitem__(self, i: int) -> MouthShape:
        return MouthShape(*(getattr(self, f.name)[i] for f in fields(self)))


_X = np.linspace(-1.0, 1.0, _N_PTS)
_BOW = 1 - 0.2 * np.exp(-((_X / 0.09) ** 2)) + 0.1 * np.exp(-(((np.abs(_X) - 0.25) / 0.12) ** 2))
_ARCH = np.sqrt(np.maximum(0, 1 - _X**2))


def mouth_shape(
    p: np.ndarray, halfwidth: float, thickness: float = 1.0, droop: float = 0.0, open_gain: float = 1.0
) -> MouthShape:
    """Contours for parameters ``p`` = (..., 7) (columns :data:`PARAMS`) at a mouth half-width in pixels;
    ``thickness`` scales the lips, ``droop`` lowers the corners, ``open_gain`` the jaw.

    ``press`` (p/b/m) compresses the closed lips: less red shows and the corners tighten, unlike the
    relaxed lips at rest; ``tuck`` (f/v) rolls the lower lip in under the upper teeth: a thinner, raised
    lower lip and no lower teeth, unlike the two rows of teeth of s/z."""
    p = np.asarray(p, np.float64)
    op, wd, rd, th, tg, pr, tk = (p[..., k, None] for k in range(7))  # (..., 1) each
    s = halfwidth / 26.0
    w = halfwidth * (1.0 + 0.32 * (wd - 0.5) - 0.22 * rd - 0.06 * pr)
    wi = w * (0.9 - 0.3 * rd)  # rounding narrows the opening more than the lips
    h = s * open_gain * 24.0 * op * (1 + 0.2 * rd)
    # near-closed consonants that show the teeth (f/v on the lower lip, s/z, t/d/n, sh) lift the upper lip
    # off the upper teeth: without it such a narrow opening blurs away and f/v looks like p/b/m
    lift = s * open_gain * 3.5 * th * np.clip(1 - op / 0.3, 0, 1)
    hu, hl = 0.38 * h + lift, 0.62 * h
    h = h + lift
    expo = 2.6 - 1.0 * rd  # spread lips give a flat opening, rounded ones an oval
    x = _X * w
    inner = np.maximum(0.0, 1 - np.clip(np.abs(x) / wi, 0, 1) ** expo) ** 0.55
    corner = droop * np.abs(_X) ** 3
    tu = s * thickness * (6.5 + 3.0 * rd) * (1 - 0.4 * pr)
    tl = s * thickness * (8.5 + 3.0 * rd) * (1 - 0.4 * pr - 0.45 * tk)
    y_iu = -hu * inner + corner
    y_il = hl * inner + corner
    y_uo = y_iu - tu * np.sqrt(np.maximum(0, 1 - np.abs(_X) ** 2.2)) * _BOW
    y_lo = y_il + tl * np.maximum(0, 1 - _X**2) ** 0.6
    # teeth bands: upper from the inner edge of the upper lip down, lower from the lower lip up
    xt = _X * wi * 0.8
    inner_t = np.maximum(0.0, 1 - np.clip(np.abs(xt) / wi, 0, 1) ** expo) ** 0.55
    y_t_top = -hu * inner_t - 1.0
    y_t_bot = np.minimum(y_t_top + 1.0 + th * s * 6.0 * (0.6 + 0.4 * _ARCH), hl * inner_t)
    y_lt_bot = hl * inner_t + 1.0
    # lower teeth: in open mouths, and as a second row just below the upper one when the teeth are
    # brought together (s/z, t/d/n; not f/v, whose lower lip covers them)
    near = np.clip(1 - op / 0.3, 0, 1) * (1 - tk)
    lower_rows = np.maximum(np.clip((op - 0.25) / 0.4, 0, 1), 0.5 * near)
    y_lt_top = y_lt_bot - 1.0 - th * s * 4.0 * lower_rows * _ARCH
    tongue_h = np.maximum(0.0, tg * 0.45 * h + 0.15 * h)[..., 0]
    # the tongue rises with ``tongue`` (l, t/d/n: tip up behind the upper teeth); at th it reaches the
    # teeth's edge, drawn over them (:func:`_draw`)
    tongue_y = (hl - 0.6 * tongue_h[..., None] - tg * tg * 0.7 * (hl + hu))[..., 0]

    def pts(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        return np.stack(np.broadcast_arrays(xs, ys), -1)

    def band(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        return np.concatenate([pts(xt, top), pts(xt, bottom)[..., ::-1, :]], axis=-2)

    return MouthShape(
        upper_outer=pts(x, y_uo),
        upper_inner=pts(x, y_iu),
        lower_inner=pts(x, y_il),
        lower_outer=pts(x, y_lo),
        upper_teeth=band(y_t_top, y_t_bot),
        lower_teeth=band(y_lt_top, y_lt_bot),
        tongue=np.stack(
            np.broadcast_arrays(0.0 * tongue_h, tongue_y, (0.6 - 0.25 * tg[..., 0]) * wi[..., 0], tongue_h),
            -1,
        ),
        opening=h[..., 0],
        front=tg[..., 0] > 0.85,
    )


Color = float | tuple[float, float, float]


@dataclass(frozen=True)
class Palette:
    """Colours (gray levels or RGB triples) of the mouth's parts."""

    lip: Color
    lip_dark: Color
    lip_light: Color
    cavity: Color
    teeth: Color
    tongue: Color


# rows of the polygon array built by _polygons: cavity, lower teeth, upper teeth, upper lip, lower lip,
# lower-lip highlight, seam, and the tongue (centre row, half-axes row)
_PARTS = (2 * _N_PTS, 2 * _N_PTS, 2 * _N_PTS, 2 * _N_PTS, 2 * _N_PTS, 2 * (_N_PTS - 8), _N_PTS, 2)
_BOUNDS = np.concatenate([[0], np.cumsum(_PARTS)])
_SLICES = [slice(int(_BOUNDS[i]), int(_BOUNDS[i + 1])) for i in range(len(_PARTS))]


def _polygons(shape: MouthShape, origin: tuple[float, float], scale: float) -> np.ndarray:
    """All polygons of the mouth as fixed-point canvas coordinates: (..., P, 2) int32, rows per
    ``_SLICES`` (works on a whole track's shapes at once)."""
    k = slice(4, _N_PTS - 4)
    ui, li, uo, lo = shape.upper_inner, shape.lower_inner, shape.upper_outer, shape.lower_outer
    span = (lo - li)[..., k, :]
    flip = np.flip
    parts = [
        np.concatenate([ui, flip(li, -2)], -2),  # cavity
        shape.lower_teeth,
        shape.upper_teeth,
        np.concatenate([uo, flip(ui, -2)], -2),  # upper lip
        np.concatenate([li, flip(lo, -2)], -2),  # lower lip
        # highlight along the middle of the lower lip (it faces the light)
        np.concatenate([li[..., k, :] + span * [0, 0.35], flip(li[..., k, :] + span * [0, 0.75], -2)], -2),
        0.5 * (ui + li),  # seam between the lips
        shape.tongue.reshape(*shape.tongue.shape[:-1], 2, 2),
    ]
    f = scale * (1 << _SHIFT)
    allp = np.concatenate(parts, -2) * f
    allp[..., :-1, :] += np.asarray(origin) * f  # the last row holds the tongue's half-axes
    return np.round(allp).astype(np.int32)


def _draw(
    canvas: np.ndarray, polys: np.ndarray, opening: float, scale: float, palette: Palette, front: bool = False
) -> None:
    """``front``: the tongue tip between the teeth (th), drawn over them."""
    cavity, lower_teeth, upper_teeth, upper, lower, light, seam, tongue = (polys[s] for s in _SLICES)
    if opening > 0.3:
        cv2.fillPoly(canvas, [cavity], palette.cavity, cv2.LINE_AA, _SHIFT)
        (cx, cy), (ax, ay) = tongue
        show = ay > scale * (1 << _SHIFT) * 0.3
        axes = (int(ax), int(ay))
        if show and not front:
            cv2.ellipse(canvas, (int(cx), int(cy)), axes, 0, 0, 360, palette.tongue, -1, cv2.LINE_AA, _SHIFT)
        cv2.fillPoly(canvas, [lower_teeth], palette.teeth, cv2.LINE_AA, _SHIFT)
        cv2.fillPoly(canvas, [upper_teeth], palette.teeth, cv2.LINE_AA, _SHIFT)
        if show and front:
            cv2.ellipse(canvas, (int(cx), int(cy)), axes, 0, 0, 360, palette.tongue, -1, cv2.LINE_AA, _SHIFT)
    cv2.fillPoly(canvas, [upper], palette.lip_dark, cv2.LINE_AA, _SHIFT)
    cv2.fillPoly(canvas, [lower], palette.lip, cv2.LINE_AA, _SHIFT)
    cv2.fillPoly(canvas, [light], palette.lip_light, cv2.LINE_AA, _SHIFT)
    cv2.polylines(canvas, [seam], False, palette.cavity, max(1, int(scale * 0.8)), cv2.LINE_AA, _SHIFT)


def draw_mouth(
    canvas: np.ndarray, shape: MouthShape, origin: tuple[float, float], scale: float, palette: Palette
) -> None:
    """Paint one frame's mouth into ``canvas`` (H, W) or (H, W, 3) in place, in painter's order
    (cavity, tongue, teeth, then the lips over them). ``origin`` is the mouth centre in unscaled
    pixels; ``scale`` maps unscaled pixels to canvas pixels."""
    _draw(canvas, _polygons(shape, origin, scale), float(shape.opening), scale, palette, bool(shape.front))


def _background(app: Appearance, rng: np.random.Generator, size: int) -> np.ndarray:
    """Static skin around the mouth at the supersampled size (uint8): lighting gradient, vignette,
    nostrils, philtrum."""
    n = size * _SS
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n - 0.5
    theta = rng.uniform(0, 2 * math.pi)
    light = 1 + app.light * (np.cos(theta) * xx + np.sin(theta) * yy) * 2
    img = (app.skin * light * (1 - 0.25 * (xx**2 + yy**2))).astype(np.float32)
    cx, cy = app.center[0] * _SS, app.center[1] * _SS
    if app.nostrils > 0.2:
        dark = float(app.skin * (1 - 0.35 * app.nostrils))
        for side in (-1, 1):
            c = (int(cx + side * 10 * _SS), int(cy - 33 * _SS))
            cv2.ellipse(img, c, (5 * _SS, 3 * _SS), side * 15, 0, 360, dark, -1, cv2.LINE_AA)
    for side in (-1, 1):  # philtrum ridges
        p0 = (int(cx + side * 3 * _SS), int(cy - 28 * _SS))
        p1 = (int(cx + side * 2 * _SS), int(cy - 10 * _SS))
        cv2.line(img, p0, p1, float(app.skin * 0.93), 2 * _SS)
    return np.clip(cv2.GaussianBlur(img, (0, 0), 2.0 * _SS), 0, 255).astype(np.uint8)


def _head_motion(rng: np.random.Generator, n: int, amplitude: tuple[float, float, float]) -> np.ndarray:
    """Slow random head motion (dx, dy, rotation in degrees) per frame: (n, 3), zero mean."""
    walk = np.cumsum(rng.normal(0, 1, (n, 3)), axis=0)
    if n > 2:
        k = np.exp(-0.5 * (np.arange(-6, 7) / 3.0) ** 2)
        walk = np.stack(
            [np.convolve(np.pad(walk[:, j], 6, mode="edge"), k / k.sum(), "valid") for j in range(3)], 1
        )
    walk -= walk.mean(axis=0, keepdims=True)
    return walk * np.asarray(amplitude) / max(1.0, float(np.abs(walk).max()))


def render_roi(
    track: np.ndarray, app: Appearance, rng: np.random.Generator, size: int = ROI_SIZE
) -> np.ndarray:
    """Gray mouth-region frames for a viseme track: (F, 7) → (F, size, size) uint8.

    ``rng`` draws the per-utterance lighting, zoom, head jitter and sensor noise."""
    base = _background(app, rng, size)
    palette = Palette(
        lip=app.lip, lip_dark=app.lip * 0.88, lip_light=min(255.0, app.lip * 1.12),
        cavity=app.cavity, teeth=app.teeth, tongue=app.tongue,
    )  # fmt: skip
    n = len(track)
    motion = _head_motion(rng, n, (1.2, 1.2, 1.5))
    zoom = rng.uniform(0.95, 1.05)
    flicker = 1 + rng.normal(0, 0.01, n)
    # sensor noise: a few noise fields, drawn once and shifted per frame (cheap and still varied)
    bank = rng.standard_normal((4, size * 2, size * 2), dtype=np.float32) * app.noise
    offsets = rng.integers(0, size, (n, 3))
    shapes = mouth_shape(
        track, app.mouth_halfwidth * zoom, app.lip_thickness, app.corner_droop, app.open_gain
    )
    polys = _polygons(shapes, app.center, _SS)
    chin = (app.center[1] + app.mouth_halfwidth * 1.05 + 7 * track[:, 0] * app.open_gain) * _SS
    chin_color = float(app.skin * 0.86)
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        img = base.copy()
        # jaw: the chin fold moves down as the mouth opens
        cv2.ellipse(
            img,
            (int(app.center[0] * _SS), int(chin[i])),
            (14 * _SS, 4 * _SS),
            0,
            200,
            340,
            chin_color,
            2 * _SS,
            cv2.LINE_8,
        )
        _draw(img, polys[i], float(shapes.opening[i]), _SS, palette, bool(shapes.front[i]))
        small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        m = cv2.getRotationMatrix2D(app.center, app.angle + motion[i, 2], 1.0)
        m[:, 2] += motion[i, :2]
        small = cv2.warpAffine(small, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        small = cv2.GaussianBlur(small, (3, 3), 0.6)
        oy, ox, b = offsets[i]
        noisy = small.astype(np.float32) * flicker[i] + bank[b % 4, oy : oy + size, ox : ox + size]
        out[i] = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


# --- full-face composite --------------------------------------------------------------------------

#: crop of ``skimage.data.astronaut()`` (y0, y1, x0, x1) shown in the face videos, and the mouth in
#: that crop once resized to :data:`FACE_SIZE`: centre (x, y), half-width and tilt in degrees —
#: measured with MediaPipe face mesh (landmarks 61/291 corners, 13/14 inner lips).
FACE_CROP = (30, 210, 110, 350)
FACE_SIZE = (320, 240)
FACE_MOUTH = ((151.8, 154.9), 29.4, 3.5)


def _face_base() -> tuple[np.ndarray, Palette]:
    from skimage import data

    y0, y1, x0, x1 = FACE_CROP
    img = cv2.resize(data.astronaut()[y0:y1, x0:x1], FACE_SIZE, interpolation=cv2.INTER_AREA)
    (mx, my), hw, _ = FACE_MOUTH
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.ellipse(mask, (int(mx), int(my + 2)), (int(hw * 1.2), int(hw * 0.62)), FACE_MOUTH[2], 0, 360, 255, -1)
    # the original (smiling) mouth is painted out; the animated one is drawn over the skin
    bg = cv2.inpaint(img, mask, 7, cv2.INPAINT_TELEA)
    skin = np.median(bg[mask > 0].reshape(-1, 3), axis=0)
    lip = np.clip(skin * np.array([0.82, 0.56, 0.58]), 0, 255)  # a rose darker than the skin
    palette = Palette(
        lip=tuple(lip.tolist()), lip_dark=tuple((lip * 0.85).tolist()), lip_light=tuple(np.clip(lip * 1.12, 0, 255).tolist()),
        cavity=(55.0, 22.0, 28.0), teeth=(226.0, 222.0, 212.0), tongue=(165.0, 78.0, 88.0),
    )  # fmt: skip
    return bg, palette


def render_face(track: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB face frames (F, 240, 320, 3) uint8 with the animated mouth at the face's real mouth position
    (``skimage.data.astronaut()``), plus slow head motion."""
    bg, palette = _face_base()
    (mx, my), hw, tilt = FACE_MOUTH
    h, w = bg.shape[:2]
    f = len(track)
    walk = np.cumsum(rng.normal(0, 1, (f, 3)), axis=0)
    walk -= walk.mean(axis=0, keepdims=True)
    walk *= np.array([1.5, 1.5, 1.0]) / max(1.0, float(np.abs(walk).max()))
    # the mouth is drawn in a supersampled patch around it and blended in with a feathered mask
    pw, ph = int(hw * 3), int(hw * 2.4)
    px0, py0 = int(mx - pw / 2), int(my - ph / 2 + 4)
    alpha = np.zeros((ph, pw), np.float32)
    cv2.ellipse(alpha, (pw // 2, ph // 2 - 4), (int(hw * 1.22), int(hw * 0.8)), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 3.0)[..., None]
    patch_bg = bg[py0 : py0 + ph, px0 : px0 + pw].astype(np.float32)
    out = np.empty((f, h, w, 3), np.uint8)
    rot = cv2.getRotationMatrix2D((pw * _SS / 2, ph * _SS / 2), -tilt, 1.0)
    for i in range(f):
        canvas = cv2.resize(patch_bg, (pw * _SS, ph * _SS), interpolation=cv2.INTER_LINEAR)
        shape = mouth_shape(track[i], hw * 0.95, 1.1, -1.0)
        draw_mouth(canvas, shape, (pw / 2, ph / 2 - 4 + 2), _SS, palette)
        canvas = cv2.warpAffine(
            canvas, rot, (pw * _SS, ph * _SS), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        patch = cv2.resize(canvas, (pw, ph), interpolation=cv2.INTER_AREA)
        frame = bg.astype(np.float32)
        frame[py0 : py0 + ph, px0 : px0 + pw] = alpha * patch + (1 - alpha) * patch_bg
        m = cv2.getRotationMatrix2D((mx, my), walk[i, 2], 1.0)
        m[:, 2] += walk[i, :2]
        frame = cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out[i] = np.clip(frame + rng.normal(0, 1.5, frame.shape), 0, 255).astype(np.uint8)
    return out


#: viseme classes in a fixed order (the class indices of :func:`frame_visemes`)
VISEMES: tuple[str, ...] = tuple(_V)


def frame_visemes(phonemes: list[tuple[str, float, float]], n_frames: int, fps: float = 25.0) -> np.ndarray:
    """The viseme class (index into :data:`VISEMES`) being articulated at each frame's centre: (F,) int64.

    A two-class phoneme (a diphthong) gives its first class in its first half and its second after; frames
    outside every phoneme are silence."""
    out = np.full(n_frames, VISEMES.index("sil"), np.int64)
    centres = (np.arange(n_frames) + 0.5) / fps
    for name, start, end in phonemes:
        classes = visemes_of(name)
        inside = (centres >= start) & (centres < end)
        if len(classes) == 2:
            first = centres < 0.5 * (start + end)
            out[inside & first] = VISEMES.index(classes[0])
            out[inside & ~first] = VISEMES.index(classes[1])
        else:
            out[inside] = VISEMES.index(classes[0])
    return out
