"""Face detectors with landmarks behind one interface, and a registry of them.

A detector takes one RGB frame and returns the landmarks of the largest face, or ``None``; its
:class:`~llama_avsr.prepare.roi.LandmarkScheme` says how those landmarks align to the mean face.
Add a backend with ``@DETECTORS.register("name")`` on a :class:`Detector` subclass.

Backends (all measured on a moving, zooming, tilting real face, ``tests/test_prepare.py``):

- ``mediapipe-mesh`` (default; ``mediapipe==0.10.21``, weights in the wheel): BlazeFace full-range finds
  the face, the 468-point face mesh runs on a crop round it, and 48 mesh points stand for iBUG-68 points
  (nose ridge and base, eye and mouth corners for the alignment, the lips for the crop centre), so the
  alignment is that of auto_avsr's 68-point (RetinaFace + FAN) variant, which made the LRS3 crops the
  published models were trained on. Crop centre within ≈ 1 px of the mouth; ≈ 15 ms a frame.
- ``mediapipe``: exactly auto_avsr's mediapipe variant: BlazeFace's keypoints (eyes, nose tip, mouth
  centre) aligned to the matching mean-face points; full-range model, short-range when the full-range
  one finds no face in the whole video. Coarser (its keypoints wander by several pixels); ≈ 5 ms a frame.
- ``dlib`` (``dlib-bin`` + ``face-recognition-models``): HOG face detector and the 68-point iBUG
  predictor, aligned as auto_avsr's 68-point variant; accurate but ≈ 40 ms a frame.
"""

from __future__ import annotations

import importlib.util
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from llama_avsr.prepare.roi import IBUG68, KEYPOINTS4, LandmarkScheme
from llama_avsr.registry import Registry

log = logging.getLogger(__name__)


class DetectorUnavailable(RuntimeError):
    """A backend whose package or weights are not installed (the message says what to install)."""


class Detector(ABC):
    """Face detection + landmarks for one frame.

    ``detect(frame)``: frame (H, W, 3) RGB uint8 → landmarks (K, 2) float pixels (x, y) of the largest
    face, or ``None`` when no face is found. K and the meaning of each point: ``scheme``.
    """

    name: ClassVar[str]
    scheme: ClassVar[LandmarkScheme]

    @abstractmethod
    def detect(self, frame: np.ndarray) -> np.ndarray | None: ...

    def detect_video(self, frames: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """Landmarks for every frame: T × ((K, 2) or ``None``)."""
        return [self.detect(f) for f in frames]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources."""


DETECTORS: Registry[type[Detector]] = Registry("face detector")


def build_detector(name: str, **kwargs: object) -> Detector:
    """Instantiate a registered backend; raises :class:`DetectorUnavailable` when it cannot run here."""
    return DETECTORS.get(name)(**kwargs)


def available_detectors() -> dict[str, str | None]:
    """Backend name → ``None`` when usable here, else why not."""
    out: dict[str, str | None] = {}
    for name in DETECTORS:
        try:
            build_detector(name).close()
            out[name] = None
        except DetectorUnavailable as e:
            out[name] = str(e)
    return out


@DETECTORS.register("mediapipe")
class MediaPipeDetector(Detector):
    """BlazeFace (``mp.solutions.face_detection``): 4 keypoints (right eye, left eye, nose tip, mouth
    centre; "right" = the subject's, i.e. on the image's left) of the largest face."""

    name = "mediapipe"
    scheme = KEYPOINTS4

    def __init__(self, min_confidence: float = 0.5) -> None:
        try:
            import mediapipe as mp

            fd = mp.solutions.face_detection
        except (ImportError, AttributeError) as e:
            raise DetectorUnavailable(
                f"mediapipe face detection unavailable ({e}); pip install 'llama-avsr[prepare]' (mediapipe==0.10.21)"
            ) from e
        self._mp = mp
        self._models = {
            "full": fd.FaceDetection(model_selection=1, min_detection_confidence=min_confidence),
            "short": fd.FaceDetection(model_selection=0, min_detection_confidence=min_confidence),
        }

    def _blazeface(self, frame: np.ndarray, model: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Largest face: (box (4,) x0, y0, x1, y1 in pixels, keypoints (4, 2)), or ``None``."""
        result = self._models[model].process(np.ascontiguousarray(frame))
        if not result.detections:
            return None
        h, w = frame.shape[:2]

        def area(d: object) -> float:
            box = d.location_data.relative_bounding_box
            return box.width * box.height

        best = max(result.detections, key=area)
        b = best.location_data.relative_bounding_box
        box = np.array([b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h])
        kp = best.location_data.relative_keypoints
        ids = [self._mp.solutions.face_detection.FaceKeyPoint(i).value for i in range(4)]
        return box, np.array([[kp[i].x * w, kp[i].y * h] for i in ids], dtype=np.float64)

    def _faces(self, frames: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        # One model for the whole clip (the two models' outputs differ slightly): the short-range model
        # only when the full-range one finds nothing at all, as in auto_avsr.
        out = [self._blazeface(f, "full") for f in frames]
        if all(r is None for r in out):
            out = [self._blazeface(f, "short") for f in frames]
        return out

    def detect(self, frame: np.ndarray) -> np.ndarray | None:
        r = self._faces([frame])[0]
        return None if r is None else r[1]

    def detect_video(self, frames: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        return [None if r is None else r[1] for r in self._faces(frames)]

    def close(self) -> None:
        for m in self._models.values():
            m.close()


# Face-mesh indices standing for iBUG 68-point landmarks: the alignment points of auto_avsr's 68-point
# variant (28 nose ridge, 33 nose base, 36/39 and 42/45 eye corners, 48/54 mouth corners) ...
_MESH_STABLE = (197, 2, 33, 133, 362, 263, 61, 291)
_IBUG_STABLE = (28, 33, 36, 39, 42, 45, 48, 54)
# ... and the outer and inner lip contours, whose mean is the mouth centre (iBUG 48-67).
_MESH_LIPS = (
    (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
    + (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
)  # fmt: skip
_MESH_POINTS = _MESH_STABLE + _MESH_LIPS

#: face mesh → 8 iBUG alignment points + 40 lip points, aligned like the 68-point layout
MESH_IBUG = LandmarkScheme(
    "mesh_ibug",
    len(_MESH_POINTS),
    tuple(range(len(_MESH_STABLE))),
    lambda mf: mf[list(_IBUG_STABLE)],
    tuple(range(len(_MESH_STABLE), len(_MESH_POINTS))),
)

_MESH_CROP = 256  # side of the face crop given to the mesh model


@DETECTORS.register("mediapipe-mesh")
class MediaPipeMeshDetector(MediaPipeDetector):
    """BlazeFace (full range) finds the largest face, then the 468-point face mesh runs on a crop twice
    the face box's size; 48 of its points stand for iBUG landmarks (:data:`MESH_IBUG`).

    Same weights as ``mediapipe`` (all in the wheel), as fast, and far steadier: on a moving, zooming face
    the crop centre stays within ≈ 1 px of the mouth where the 4 BlazeFace keypoints wander by ≈ 6 px.
    Frames where the mesh fails count as without a face (their landmarks are interpolated)."""

    name = "mediapipe-mesh"
    scheme = MESH_IBUG

    def __init__(self, min_confidence: float = 0.5) -> None:
        super().__init__(min_confidence)
        self._mesh = self._mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, min_detection_confidence=min_confidence
        )

    def _mesh_points(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        import cv2

        centre = (box[:2] + box[2:]) / 2
        side = 2.0 * max(box[2] - box[0], box[3] - box[1], 1.0)
        scale = _MESH_CROP / side
        to_crop = np.array(
            [[scale, 0, _MESH_CROP / 2 - scale * centre[0]], [0, scale, _MESH_CROP / 2 - scale * centre[1]]]
        )
        crop = cv2.warpAffine(frame, to_crop, (_MESH_CROP, _MESH_CROP), flags=cv2.INTER_LINEAR)
        result = self._mesh.process(crop)
        if not result.multi_face_landmarks:
            return None
        lm = result.multi_face_landmarks[0].landmark
        pts = np.array([[lm[i].x * _MESH_CROP, lm[i].y * _MESH_CROP] for i in _MESH_POINTS], dtype=np.float64)
        return (pts - to_crop[:, 2]) / scale  # back to frame pixels

    def detect_video(self, frames: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        return [
            None if r is None else self._mesh_points(f, r[0])
            for f, r in zip(frames, self._faces(frames), strict=True)
        ]

    def detect(self, frame: np.ndarray) -> np.ndarray | None:
        return self.detect_video([frame])[0]

    def close(self) -> None:
        super().close()
        self._mesh.close()


def dlib_predictor_path() -> Path:
    """The 68-point predictor shipped by ``face-recognition-models``, found without importing the package
    (its ``__init__`` needs the removed ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(
            "dlib backend needs the 68-point predictor: pip install face-recognition-models"
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "models" / "shape_predictor_68_face_landmarks.dat"
        if p.is_file():
            return p
    raise DetectorUnavailable(
        "face-recognition-models is installed but shape_predictor_68_face_landmarks.dat is missing"
    )


@DETECTORS.register("dlib")
class DlibDetector(Detector):
    """dlib HOG face detector + 68-point iBUG shape predictor (largest face)."""

    name = "dlib"
    scheme = IBUG68

    def __init__(self, upsample: int = 1) -> None:
        try:
            import dlib
        except ImportError as e:
            raise DetectorUnavailable(
                "dlib backend needs dlib: pip install dlib-bin face-recognition-models"
            ) from e
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_predictor_path()))
        self._upsample = upsample

    def detect(self, frame: np.ndarray) -> np.ndarray | None:
        frame = np.ascontiguousarray(frame)
        rects, scores, _ = self._detector.run(frame, self._upsample, 0.0)
        if not rects:
            return None
        best = max(range(len(rects)), key=lambda i: (rects[i].area(), scores[i]))
        shape = self._predictor(frame, rects[best])
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
