"""The TensorRT stand-ins (tests/trt_standin/fake_trt.py) accept nothing the real bindings reject.

Each simulated version is compared with NVIDIA's real module of the same line (8.6.2 with 8.6.1,
10.3.0.30 with 10.3.0, 11.1.0.7 with 11.1.0.106; 8.5 has no wheel on PyPI): every module attribute,
enum member and class member a stand-in exposes must exist there, as a method where the real one is a
method and as a property where it is one; a stand-in must not let a read-only property be assigned;
and a stand-in method must take no argument count or keyword name the real signature refuses.
"""

from __future__ import annotations

import pytest

from tests.test_trt_real_bindings import real, run_real  # noqa: F401 (the module-scoped fixture)
from tests.trt_standin import fake_trt

PAIRS = [("8.6", "V86"), ("10.3", "V10"), ("11.1", "V11")]


def differences(real, label: str, standin: str, patch: str = "") -> list[str]:  # noqa: F811
    code = ("import json, tensorrt; from tests.trt_usage import standin_differences; from tests.trt_standin import fake_trt as f; "
            f"fake = f.make_tensorrt(f.{standin}); {patch or 'pass'}; print(json.dumps(standin_differences(tensorrt, fake)))")
    return run_real(real, label, code)


@pytest.mark.parametrize("label, standin", PAIRS)
def test_standin_accepts_nothing_the_real_module_rejects(real, label, standin):  # noqa: F811
    assert getattr(fake_trt, standin).startswith(label + ".")
    assert differences(real, label, standin) == []


@pytest.mark.parametrize("patch, expect", [
    # a name the real module does not have
    ("fake.BuilderFlag.HALF_PRECISION = fake.BuilderFlag.FP16", "BuilderFlag.HALF_PRECISION does not exist"),
    # a parameter named unlike the real one (a keyword call would pass here and fail on a device)
    ("fake._classes['IBuilderConfig'].set_flag = lambda self, f: None", "set_flag: the stand-in's parameters ['f']"),
    # a read-only property the stand-in lets the code assign
    ("fake._classes['ILayer']._readonly = frozenset()", "ILayer.type is read-only"),
    # one argument too many accepted
    ("fake._classes['Builder'].create_builder_config = lambda self, flags=0: None", "create_builder_config: the stand-in takes [0, 1]"),
])
def test_a_standin_that_accepts_more_is_caught(real, patch, expect):  # noqa: F811
    found = differences(real, "10.3", "V10", patch)
    assert any(expect in d for d in found), found
