"""Mouth region of interest from facial landmarks: interpolate, smooth, align to a mean face, crop.

The recipe is the one of auto_avsr's preparation (``preparation/detectors/*/video_process.py``), which
produced the LRS3 crops the published models were trained on:

1. frames where the detector found no face get landmarks linearly interpolated from their neighbours
   (held constant before the first and after the last detection);
2. each frame's landmarks are averaged over a centred window of ``window`` frames (12; shorter at the
   ends) and moved back to the frame's own centroid, so shape, scale and rotation are smoothed but the
   position follows the face;
3. a similarity transform (``cv2.estimateAffinePartial2D``, LMedS) maps the detector's stable points
   onto the same points of a mean face in a 256 × 256 reference frame;
4. the gray frame is warped by it and a ``crop_size`` square (96) is cut around the aligned mouth centre.

Steps 3 and 4 are done as one warp straight into the crop (the crop's origin is rounded to whole pixels
as auto_avsr rounds its slice bounds), so the result equals warp-then-crop while touching 96² instead of
256² pixels, and a mouth near the border is padded with black instead of giving a smaller patch.

Shapes: T frames, K landmarks per frame, S stable points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

#: side of the reference frame the mean face lives in (auto_avsr: 256 × 256)
REFERENCE_SIZE = 256
#: side of the square mouth crop (auto_avsr / AV-HuBERT: 96; training then crops 88)
CROP_SIZE = 96
#: landmark smoothing window in frames (auto_avsr ``window_margin``)
SMOOTHING_WINDOW = 12

# A 68-point (iBUG 300-W order) mean face in the 256 × 256 reference frame.
#
# auto_avsr aligns to ``20words_mean_face.npy`` (the mean landmarks of LRW's 256 × 256 frames), a binary
# file that is not available here.  This one is the mean shape stored in dlib's 68-point predictor
# (iBUG 300-W training faces; ``shape_predictor_68_face_landmarks.dat`` of ``face-recognition-models``),
# scaled by 165 px per detector box and placed with the mouth centre at (128, 165): as in LRW, the eyes
# are ≈ 68 px apart at y ≈ 90, and a 96-px crop round the mouth shows the lips (≈ 60 px wide), the
# base of the nose at the top and the chin at the bottom.  For bit-exact auto_avsr crops pass the
# original file (``--mean-face 20words_mean_face.npy``, shape (68, 2)).
MEAN_FACE_68 = (
    (50.4, 91.1), (50.9, 111.6), (53.1, 132.1), (57.3, 152.2), (65.3, 170.8), (77.6, 186.9),
    (92.7, 200.4), (109.2, 211.3), (128.0, 214.5), (146.8, 211.3), (163.3, 200.4), (178.4, 186.9),
    (190.7, 170.8), (198.7, 152.2), (202.9, 132.1), (205.1, 111.6), (205.6, 91.1), (65.2, 76.1),
    (74.8, 67.4), (88.4, 64.8), (102.4, 66.8), (115.6, 72.3), (140.4, 72.3), (153.6, 66.8),
    (167.6, 64.8), (181.2, 67.4), (190.8, 76.1), (128.0, 88.4), (128.0, 101.6), (128.0, 114.7),
    (128.0, 128.2), (112.2, 137.4), (119.8, 140.1), (128.0, 142.5), (136.2, 140.1), (143.8, 137.4),
    (80.8, 90.0), (89.2, 85.2), (99.3, 85.4), (108.1, 92.0), (98.6, 93.7), (88.6, 93.6),
    (147.9, 92.0), (156.7, 85.4), (166.8, 85.2), (175.2, 90.0), (167.4, 93.6), (157.4, 93.7),
    (97.8, 161.9), (108.9, 157.5), (120.2, 155.2), (128.0, 157.1), (135.8, 155.2), (147.1, 157.5),
    (158.2, 161.9), (147.4, 172.8), (136.5, 177.6), (128.0, 178.5), (119.5, 177.6), (108.6, 172.8),
    (102.5, 162.5), (120.1, 161.7), (128.0, 162.6), (135.9, 161.7), (153.5, 162.5), (136.1, 167.6),
    (128.0, 168.6), (119.9, 167.6),
)  # fmt: skip


def load_mean_face(path: str | Path | None = None) -> np.ndarray:
    """The 68-point mean face, (68, 2) float64 in the 256 × 256 reference frame: the built-in one, or a
    ``.npy`` file such as auto_avsr's ``20words_mean_face.npy``."""
    if path is None:
        return np.asarray(MEAN_FACE_68, dtype=np.float64)
    face = np.load(Path(path), allow_pickle=False)
    if face.shape != (68, 2):
        raise ValueError(f"{path}: a mean face must have shape (68, 2), got {face.shape}")
    return face.astype(np.float64)


@dataclass(frozen=True)
class LandmarkScheme:
    """How a detector's landmarks are aligned to the 68-point mean face.

    num_points: K, landmarks per face the detector returns.
    stable_points: indices into the K landmarks used to estimate the alignment.
    reference: mean face (68, 2) → the matching reference points (S, 2).
    mouth_points: indices into the K landmarks whose mean is the mouth centre the crop is centred on.
    """

    name: str
    num_points: int
    stable_points: tuple[int, ...]
    reference: Callable[[np.ndarray], np.ndarray]
    mouth_points: tuple[int, ...]


def _keypoints4_reference(mean_face: np.ndarray) -> np.ndarray:
    # right eye, left eye, nose, mouth centre — what auto_avsr's mediapipe variant aligns to
    return np.stack(
        [
            mean_face[36:42].mean(0),
            mean_face[42:48].mean(0),
            mean_face[31:36].mean(0),
            mean_face[48:68].mean(0),
        ]
    )


_IBUG68_STABLE = (28, 33, 36, 39, 42, 45, 48, 54)  # nose ridge and tip, eye corners, mouth corners

#: 4 keypoints (subject's right eye, left eye, nose tip, mouth centre), as from MediaPipe face detection
KEYPOINTS4 = LandmarkScheme("keypoints4", 4, (0, 1, 2, 3), _keypoints4_reference, (3,))
#: the 68-point iBUG 300-W layout (dlib, face_alignment/FAN), aligned as auto_avsr's retinaface variant
IBUG68 = LandmarkScheme(
    "ibug68", 68, _IBUG68_STABLE, lambda mf: mf[list(_IBUG68_STABLE)], tuple(range(48, 68))
)


def interpolate_landmarks(landmarks: Sequence[np.ndarray | None]) -> np.ndarray:
    """Fill frames without a detection. T items of (K, 2) or ``None`` → (T, K, 2) float64.

    Gaps are interpolated linearly; frames before the first / after the last detection copy it.
    Raises ``ValueError`` when no frame has landmarks."""
    valid = [i for i, lm in enumerate(landmarks) if lm is not None]
    if not valid:
        raise ValueError("no frame has landmarks")
    known = np.stack([np.asarray(landmarks[i], dtype=np.float64) for i in valid])  # (V, K, 2)
    t = np.arange(len(landmarks))
    flat = known.reshape(len(valid), -1)
    out = np.stack([np.interp(t, valid, flat[:, j]) for j in range(flat.shape[1])], axis=1)
    return out.reshape(len(landmarks), *known.shape[1:])


def smooth_landmarks(landmarks: np.ndarray, window: int = SMOOTHING_WINDOW) -> np.ndarray:
    """Centred moving average over ``window`` frames (half-width ``window // 2``, shrunk at the ends so
    the window stays symmetric), each frame then shifted back to its own centroid. (T, K, 2) → (T, K, 2)"""
    lm = np.asarray(landmarks, dtype=np.float64)
    n = len(lm)
    t = np.arange(n)
    half = np.minimum(np.minimum(window // 2, t), n - 1 - t)  # (T,)
    csum = np.concatenate([np.zeros((1, *lm.shape[1:])), np.cumsum(lm, axis=0)])  # (T+1, K, 2)
    lo, hi = t - half, t + half + 1
    smoothed = (csum[hi] - csum[lo]) / (hi - lo)[:, None, None]
    return smoothed + (lm.mean(axis=1, keepdims=True) - smoothed.mean(axis=1, keepdims=True))


def _similarity_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) src → dst, (2, 3). Fallback when LMedS fails."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ e @ vt
    scale = np.trace(np.diag(sig) @ e) / max(s.var(0).sum(), 1e-12)
    a = scale * rot
    return np.hstack([a, (mu_d - a @ mu_s)[:, None]])


def alignment_transform(landmarks: np.ndarray, scheme: LandmarkScheme, mean_face: np.ndarray) -> np.ndarray:
    """Similarity transform (2, 3) mapping frame pixels to the 256 × 256 mean-face frame, estimated from
    the scheme's stable points. landmarks: (K, 2)."""
    src = np.asarray(landmarks, dtype=np.float64)[list(scheme.stable_points)]
    dst = scheme.reference(mean_face).astype(np.float64)
    m, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32), method=cv2.LMEDS)
    if m is None or not np.all(np.isfinite(m)):
        m = _similarity_lstsq(src, dst)
    return m.astype(np.float64)


def roi_transforms(
    landmarks: np.ndarray,
    scheme: LandmarkScheme,
    mean_face: np.ndarray | None = None,
    crop_size: int = CROP_SIZE,
    window: int = SMOOTHING_WINDOW,
) -> np.ndarray:
    """Per-frame affine maps from frame pixels to crop pixels. landmarks: (T, K, 2), every frame filled
    (see :func:`interpolate_landmarks`) → (T, 2, 3); point p of frame t lands at ``A[t] @ (p, 1)``."""
    mean_face = load_mean_face() if mean_face is None else mean_face
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (scheme.num_points, 2):
        raise ValueError(f"expected landmarks (T, {scheme.num_points}, 2) for {scheme.name}, got {lm.shape}")
    smoothed = smooth_landmarks(lm, window)
    out = np.empty((len(lm), 2, 3))
    for t, pts in enumerate(smoothed):
        m = alignment_transform(pts, scheme, mean_face)
        mouth = pts[list(scheme.mouth_points)] @ m[:, :2].T + m[:, 2]  # (M, 2) in the aligned frame
        origin = np.round(mouth.mean(0) - crop_size / 2)  # whole pixels, as auto_avsr's slice bounds
        out[t] = m
        out[t, :, 2] -= origin
    return out


def warp_rois(frames: np.ndarray, transforms: np.ndarray, crop_size: int = CROP_SIZE) -> np.ndarray:
    """Gray crops through per-frame affine maps. frames: (T, H, W, 3) RGB or (T, H, W) gray uint8;
    transforms: (T, 2, 3) → (T, crop_size, crop_size) uint8 (outside the frame is black)."""
    if len(frames) != len(transforms):
        raise ValueError(f"{len(frames)} frames but {len(transforms)} transforms")
    out = np.empty((len(frames), crop_size, crop_size), dtype=np.uint8)
    for t, (frame, m) in enumerate(zip(frames, transforms, strict=True)):
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
        out[t] = cv2.warpAffine(
            gray,
            m,
            (crop_size, crop_size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
    return out


def crop_mouth_rois(
    frames: np.ndarray,
    landmarks: np.ndarray,
    scheme: LandmarkScheme,
    mean_face: np.ndarray | None = None,
    crop_size: int = CROP_SIZE,
    window: int = SMOOTHING_WINDOW,
) -> np.ndarray:
    """The mouth ROI sequence given landmarks (pure: no detection, no I/O).

    frames: (T, H, W, 3) RGB or (T, H, W) gray uint8; landmarks: (T, K, 2) in pixels, every frame filled
    → (T, crop_size, crop_size) gray uint8."""
    return warp_rois(frames, roi_transforms(landmarks, scheme, mean_face, crop_size, window), crop_size)
