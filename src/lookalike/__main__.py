"""``python -m lookalike`` runs the command line."""

from lookalike.cli.app import app

app()
