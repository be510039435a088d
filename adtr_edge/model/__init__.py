"""The ADTR model in PyTorch: in-graph preprocessing, frozen backbone, reconstruction transformer, head."""

from .adtr import ADTR, AnomalyHead, Backbone, ReconstructionTransformer, build_model

__all__ = ["ADTR", "AnomalyHead", "Backbone", "ReconstructionTransformer", "build_model"]
