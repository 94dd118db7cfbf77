"""Raw video → mouth ROI (96 × 96 gray, 25 fps) + 16 kHz audio + label CSV (the corpus layout, docs/data.md).

- :mod:`.detectors`: face detection + landmarks behind one interface (``mediapipe``, ``dlib``), a registry;
- :mod:`.roi`: pure landmark → ROI functions (interpolate, smooth, align to a mean face, crop);
- :mod:`.pipeline`: files → corpus (parallel, resumable, with a report), and :func:`prepare_video` for one
  file on the fly.

Heavy imports (PyAV, MediaPipe) happen when these names are first used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Detector": "detectors",
    "DETECTORS": "detectors",
    "DetectorUnavailable": "detectors",
    "build_detector": "detectors",
    "available_detectors": "detectors",
    "LandmarkScheme": "roi",
    "KEYPOINTS4": "roi",
    "IBUG68": "roi",
    "MEAN_FACE_68": "roi",
    "load_mean_face": "roi",
    "interpolate_landmarks": "roi",
    "smooth_landmarks": "roi",
    "roi_transforms": "roi",
    "crop_mouth_rois": "roi",
    "RoiConfig": "pipeline",
    "PrepareOptions": "pipeline",
    "PrepareError": "pipeline",
    "PrepareReport": "pipeline",
    "ItemResult": "pipeline",
    "Job": "pipeline",
    "REASONS": "pipeline",
    "collect_inputs": "pipeline",
    "prepare_video": "pipeline",
    "prepare_corpus": "pipeline",
    "normalize_text": "pipeline",
    "read_transcript": "pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
