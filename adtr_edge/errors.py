"""User-facing errors.

Anything the user can fix (a missing file, a bad option value, a corrupt image) is raised as
``AdtrError`` with a one-line message that names the file, option or value. The CLI prints the
message (no traceback) and exits non-zero; library users catch one exception type.
"""

from __future__ import annotations


class AdtrError(Exception):
    """A problem with the user's input, reported as one clear line."""

    exit_code = 2


def require(condition: bool, message: str) -> None:
    """Raise ``AdtrError(message)`` unless ``condition`` holds."""
    if not condition:
        raise AdtrError(message)
