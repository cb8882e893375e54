"""The ``lookalike`` command line: the Typer app and its entry point (:mod:`.app`)."""

from lookalike.cli.app import app, main

__all__ = ["app", "main"]
