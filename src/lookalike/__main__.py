"""``python -m lookalike`` runs the command line."""

from lookalike.cli.application import app

app()
