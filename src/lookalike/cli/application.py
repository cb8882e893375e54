"""The ``lookalike`` app: each capability registers its own commands.

``COMMANDS`` names the modules, imported on demand, so this file imports none of them and a new
capability adds one line here. Human-readable output goes to the terminal, progress bars to
stderr, and ``--json`` prints machine-readable JSON on stdout (``search --json``: one object per
query per line, a public contract: ``{"query": ..., "results": [{"path", "score", "id", ...}]}``).
"""

from __future__ import annotations

import importlib
import sys

import typer

#: Modules with a ``register(app)`` function, in the order their commands are listed.
COMMANDS = (
    "lookalike.cli.core",
    "lookalike.evaluate.cli",
    "lookalike.server.cli",
    "lookalike.train.cli",
    "lookalike.geo.cli",
    "lookalike.copies.cli",
    "lookalike.detect.cli",
)

app = typer.Typer(
    help="lookalike: reverse image search. Index a folder, then find the images that look like "
    "a query.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show "[default: ...]" literally
)

for _name in COMMANDS:
    importlib.import_module(_name).register(app)


def main() -> None:  # pragma: no cover - console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
