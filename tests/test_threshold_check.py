"""One finiteness check for a raw-score threshold (postprocessing.finite_threshold), used by
``--threshold`` / ``Detector.load``, ``folder.save_threshold`` and the web view's slider: the same
values pass and fail everywhere, each with a one-line error naming what was given."""

import math

import numpy as np
import pytest

from adtr_edge.errors import AdtrError
from adtr_edge.postprocessing import check_threshold, finite_threshold


@pytest.mark.parametrize("good", [0, 3, 2.5, -1.0, np.float32(0.25), np.float64(7.0), np.int64(4)])
def test_a_finite_number_passes_as_a_float(good):
    value = finite_threshold(good)
    assert isinstance(value, float) and value == float(good)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float32("nan"), True, False, "3.5", "x", b"1", None, [1.0], {}])
def test_anything_else_is_one_line_naming_the_option(bad):
    with pytest.raises(AdtrError, match=r"^threshold .*: must be a finite number \(the raw-score threshold\)$"):
        finite_threshold(bad, "threshold")


def test_check_threshold_lets_no_override_through_and_names_the_cli_option():
    check_threshold(None)
    check_threshold(1.5)
    with pytest.raises(AdtrError, match=r"^--threshold nan: must be a finite number"):
        check_threshold(math.nan)


def test_the_three_entry_points_share_the_check():
    import inspect

    pytest.importorskip("starlette")
    from adtr_edge import folder
    from adtr_edge.runtime.web import app

    for module in (folder, app):
        source = inspect.getsource(module)
        assert "finite_threshold(" in source and "isfinite" not in source, module.__name__
