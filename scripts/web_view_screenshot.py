"""Refresh docs/img/web-view.png: run the web view's browser test (tests/test_web_browser.py: a
paced camera streams into the page in Debian's chromium) and keep its screenshot.

    python scripts/web_view_screenshot.py [--out docs/img/web-view.png]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "web-view.png")
    args = ap.parse_args(argv[1:])
    env = dict(os.environ, ADTR_WEB_SCREENSHOT=str(args.out.resolve()), PYTHONPATH=str(REPO))
    test = "tests/test_web_browser.py::test_page_shows_the_live_stream_and_the_slider_changes_labels"
    # -rs: a skip (no chromium, no playwright) must be seen, not mistaken for a fresh screenshot
    before = args.out.stat().st_mtime_ns if args.out.is_file() else None
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", test], cwd=REPO, env=env)
    if done.returncode != 0:
        return done.returncode
    if not args.out.is_file() or args.out.stat().st_mtime_ns == before:
        print(f"{args.out} was not rewritten (the test was skipped?)", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
