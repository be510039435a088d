"""onnxsim's native "WARNING: failed to run ... skip" line becomes one harmless log line (issue 14)."""

from __future__ import annotations

import logging
import os

from adtr_edge.export.onnx_export import _native_output, _report_native_output

FOLD = 'WARNING: failed to run "Reshape" op (name is "/transformer/Reshape_1"), skip...'


def test_native_output_is_captured_from_the_file_descriptors(capfd):
    with _native_output() as captured:
        os.write(2, (FOLD + "\n").encode())
        os.write(1, b"something else\n")
    assert FOLD in captured() and "something else" in captured()
    assert FOLD not in capfd.readouterr().err  # did not reach the terminal


def test_the_harmless_fold_warning_is_one_log_line_and_other_output_passes(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="adtr_edge.export.onnx_export"):
        _report_native_output(FOLD + "\nreal problem\n", "transformer")
    err = capsys.readouterr().err
    assert "real problem" in err and "failed to run" not in err
    (record,) = caplog.records
    assert "1 node(s) of the transformer graph unfolded" in record.getMessage()
    assert "Reshape /transformer/Reshape_1" in record.getMessage() and "harmless" in record.getMessage()
