"""The real dataset loads unchanged (run with -m data)."""

from __future__ import annotations

import numpy as np
import pytest

from adtr_edge.data import guard_disjoint, load_batch, load_dataset
from adtr_edge.preprocessing import PreprocessSpec


@pytest.mark.data
def test_magnetic_tile_loads_unchanged(magnetic_tile):  # conftest fixture: skips where the data is absent
    train = load_dataset(magnetic_tile, "train").validate()
    test = load_dataset(magnetic_tile, "test").validate()
    assert len(train) == 761
    s = test.summary()
    assert s["n_normal"] == 191 and s["n_anomalous"] == 392 and s["n_with_mask"] == 392
    assert s["counts"] == {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "good": 191, "uneven": 103}
    guard_disjoint(train, test)
    uneven = [i for i, d in enumerate(test.defects) if d == "uneven"]
    assert sum(not test.mask(i).any() for i in uneven) == 4  # empty in the source, as documented
    sizes = {test.image(i).shape for i in range(0, len(test), 40)}
    assert len(sizes) > 1  # mixed sizes, each mask at its image's size (validate checked)
    batch, masks = load_batch(test, [0, len(test) - 1], PreprocessSpec(height=64, width=64))
    assert batch.shape == (2, 64, 64, 3) and masks.shape == (2, 64, 64) and masks.dtype == np.bool_
