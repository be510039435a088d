"""Evaluation: metrics and the paired bootstrap, heat maps and overlays, a checkpoint's evaluation and
its pictures, the training-free baselines and the robustness report. Import the modules themselves
(``adtr_edge.evaluation.metrics``); this package imports nothing, so each keeps its own weight."""
