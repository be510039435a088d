"""benchmarks/plot_pool_clip.py picks its images by a rule, not by eye: the median mask area of each
defect type (docs/benchmarks.md 1.3, the pooled map part with its cells clipped)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import plot_pool_clip as ppc  # noqa: E402


def test_each_defect_type_gives_its_median_area_image():
    masks = np.zeros((7, 4, 4), dtype=bool)
    for i, area in enumerate([0, 3, 1, 2, 5, 9, 0]):
        masks[i].flat[:area] = True
    labels = np.array([0, 1, 1, 1, 1, 1, 1])
    defects = ["good", "crack", "crack", "crack", "spot", "spot", "spot"]  # the last spot has an empty mask
    assert ppc.median_area_picks(labels, defects, masks) == [3, 4]  # crack: areas 3, 1, 2 -> 2; spot: 5, 9 -> the lower


def test_a_variant_must_name_a_checkpoint_folder(tmp_path):
    (tmp_path / "checkpoint.json").write_text("{}")
    assert ppc.parse_variant(f"map alone={tmp_path}") == ("map alone", tmp_path)
    for bad in ("no-equals", f"={tmp_path}", f"x={tmp_path / 'missing'}"):
        with pytest.raises(SystemExit, match="--variant"):
            ppc.parse_variant(bad)
