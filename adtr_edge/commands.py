"""Running a typer app as a command: the one place that turns errors into exit codes, shared by
``adtr-edge`` (adtr_edge.cli) and the runtime-only ``python -m adtr_edge.runtime.cli``, so the two
entry points cannot drift apart again.

* ``AdtrError``: one red line ``error: ...`` on stderr, its exit code (2);
* Ctrl-C (``KeyboardInterrupt``, ``typer.Abort``): ``aborted``, exit 130 (the shell's 128 + SIGINT);
* click usage errors: click's own message and code; ``--help`` and ``typer.Exit``: their code.

``register(app)`` adds the toolkit's own command, ``version``.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from .errors import AdtrError
from .version import __version__


def run_app(app: typer.Typer, argv: Optional[List[str]] = None) -> int:
    try:
        # Without standalone mode click still turns Ctrl-C into its Abort and typer returns 130.
        code = app(args=argv, standalone_mode=False)
    except AdtrError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # click usage errors carry their own exit code
        code = getattr(e, "exit_code", None)
        if code is not None and hasattr(e, "show"):
            e.show()
            return code
        raise
    if code == 130:
        typer.echo("aborted", err=True)
    return code if isinstance(code, int) else 0


def register(app: typer.Typer) -> None:
    @app.command()
    def version():
        """Print the toolkit version."""
        typer.echo(__version__)
