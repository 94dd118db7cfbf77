"""Face detectors with landmarks behind one interface, and a registry of them.

A detector takes one RGB frame and returns the landmarks of the largest face, or ``None``; its
:class:`~llama_avsr.prepare.roi.LandmarkScheme` says how those landmarks align to the mean face.
Add a backend with ``@DETECTORS.register("name")`` on a :class:`Detector` subclass.

Backends:

- ``mediapipe`` (default; ``mediapipe==0.10.21``, weights in the wheel): ``mp.solutions.face_detection``
  (BlazeFace) and its 6 keypoints, of which the eyes, nose tip and mouth centre are used — what
  auto_avsr's mediapipe preparation does. The full-range model runs first; when it finds no face in the
  whole video, the short-range model is tried (also as auto_avsr).
- ``dlib`` (``dlib-bin`` + ``face-recognition-models``): HOG face detector and the 68-point iBUG
  predictor, aligned as auto_avsr's retinaface/FAN variant (stable points: nose, eye and mouth corners).
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
                f"mediapipe face detection unavailable ({e}); install mediapipe==0.10.21"
            ) from e
        self._fd = fd
        self._models = {
            "full": fd.FaceDetection(model_selection=1, min_detection_confidence=min_confidence),
            "short": fd.FaceDetection(model_selection=0, min_detection_confidence=min_confidence),
        }

    def _detect(self, frame: np.ndarray, model: str) -> np.ndarray | None:
        frame = np.ascontiguousarray(frame)
        result = self._models[model].process(frame)
        if not result.detections:
            return None
        h, w = frame.shape[:2]

        def area(d: object) -> float:
            box = d.location_data.relative_bounding_box
            return box.width * box.height

        best = max(result.detections, key=area)
        kp = best.location_data.relative_keypoints
        ids = [self._fd.FaceKeyPoint(i).value for i in range(4)]
        return np.array([[kp[i].x * w, kp[i].y * h] for i in ids], dtype=np.float64)

    def detect(self, frame: np.ndarray) -> np.ndarray | None:
        lm = self._detect(frame, "full")
        return lm if lm is not None else self._detect(frame, "short")

    def detect_video(self, frames: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        # One model for the whole clip (landmarks of both models differ slightly): the short-range model
        # only when the full-range one finds nothing at all, as in auto_avsr.
        out = [self._detect(f, "full") for f in frames]
        if all(lm is None for lm in out):
            out = [self._detect(f, "short") for f in frames]
        return out

    def close(self) -> None:
        for m in self._models.values():
            m.close()


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
