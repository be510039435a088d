"""Datasets, the generated sample dataset, and anomaly sources (numpy + OpenCV only, no torch)."""

from .anomalies import (
    ExternalAnomalies,
    SyntheticAnomalies,
    confetti,
    scar,
    load_labelled_anomalies,
    texture_patch,
)
from .datasets import (
    ImageSet,
    Sample,
    guard_disjoint,
    is_mvtec_root,
    load_batch,
    load_dataset,
    load_folder,
    load_mvtec,
)
from .generate import DEFECT_KINDS, GeneratedVideo, draw_defect, generate_sample_dataset, generate_video

__all__ = [
    "DEFECT_KINDS",
    "ExternalAnomalies",
    "GeneratedVideo",
    "ImageSet",
    "Sample",
    "SyntheticAnomalies",
    "confetti",
    "scar",
    "draw_defect",
    "generate_sample_dataset",
    "generate_video",
    "guard_disjoint",
    "is_mvtec_root",
    "load_batch",
    "load_dataset",
    "load_folder",
    "load_labelled_anomalies",
    "load_mvtec",
    "texture_patch",
]
