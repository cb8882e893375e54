"""The ``lookalike`` app: each capability registers its own commands.

``COMMANDS`` names the modules, imported on demand, so this file imports none of them and a new
capability adds one line here. Human-readable output goes to the terminal, progress bars to
stderr, and ``--json`` prints machine-readable JSON on stdout (``search --json``: one object per
query per line, a public contract: ``{"query": ..., "results": [{"path", "score", "id", ...}]}``).

The rules every command follows (inputs, exit codes, option names) are in docs/cli.md and
checked in :mod:`lookalike.cli.validate`. ``-h`` is ``--help`` everywhere; ``--version`` prints
the version.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

#: Modules with a ``register(app)`` function, in the order their commands are listed.
COMMANDS = (
    "lookalike.cli.indexing",
    "lookalike.cli.search",
    "lookalike.cli.core",
    "lookalike.cli.check",
    "lookalike.cli.watch",
    "lookalike.evaluate.cli",
    "lookalike.server.cli",
    "lookalike.train.cli",
    "lookalike.geo.cli",
    "lookalike.copies.cli",
    "lookalike.detect.cli",
    "lookalike.words.cli",
)


class Command(TyperCommand):
    """A command whose help names its arguments plainly: ``FOLDER...`` in the usage line and in
    the list of arguments, never Python types (``<list[str]>``) or braces (``{folders}``)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = _argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append((_argument_name(param), record[1]))
            else:
                opts.append(record)
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)


def _argument_name(param: Any) -> str:
    name = param.metavar or (param.name or "").upper()
    return name if param.nargs == 1 or name.endswith("...") else f"{name}..."


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"lookalike {version('lookalike')}")
        except PackageNotFoundError:  # pragma: no cover - run from a source tree
            print("lookalike (not installed)")
        raise typer.Exit()


app = typer.Typer(
    help="lookalike: reverse image search. Index a folder, then find the images that look like "
    "a query. Exit codes: 0 success, 1 some inputs failed (the others were answered), 2 usage "
    "errors. The rules: docs/cli.md.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show "[default: ...]" literally
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _app_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """lookalike: reverse image search."""


for _name in COMMANDS:
    importlib.import_module(_name).register(app)
for _info in app.registered_commands:
    if _info.cls in (None, TyperCommand):
        _info.cls = Command


def main() -> None:  # pragma: no cover - console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
