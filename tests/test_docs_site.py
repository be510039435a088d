"""The documentation site builds with ``mkdocs build --strict`` (mkdocs.yml): a link to a missing
page, a dangling anchor or a page left out of the navigation fails here, not on a reader's screen."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip('mkdocs or mkdocs-material is not installed (pip install -e ".[docs]")')
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
                          "--site-dir", str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    warnings = [line for line in (out.stdout + out.stderr).splitlines() if "WARNING" in line or "Error" in line]
    assert out.returncode == 0, "\n".join(warnings) or out.stderr[-2000:]
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_page_in_docs_is_in_the_navigation():
    """mkdocs.yml's ``omitted_files: warn`` covers this when mkdocs is installed; this check runs without it."""
    nav = (REPO / "mkdocs.yml").read_text()
    pages = sorted(p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md"))
    missing = [p for p in pages if f": {p}" not in nav]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"
