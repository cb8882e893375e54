"""``lookalike watch``: keep a collection in sync with folders as files appear, change or go.

Example::

    lookalike watch ~/Photos --collection photos.lookalike
    12:00:00 12408 indexed at start: 3 added, 0 updated, 1 removed, 0 skipped
    12:00:41 1 added, 0 updated, 0 removed, 0 skipped (1 paths, 0.4 s)

Runs until stopped (Ctrl-C or SIGTERM: the batch under way is committed first, exit code 0).
``kill -9`` loses nothing: the next ``watch`` or ``index`` resumes (``ingest/watch.py``).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated

import typer

from lookalike.cli import validate
from lookalike.cli.common import CollectionOpt, JsonOpt, default_collection, err, errors, out


def watch_command(
    folders: Annotated[
        list[Path],
        typer.Argument(metavar="FOLDER...", help="Folders to keep the collection in sync with."),
    ],
    collection: CollectionOpt = None,
    as_json: JsonOpt = False,
    poll: Annotated[
        bool,
        typer.Option(
            "--poll",
            help="Look for changes by listing the folders every second instead of file "
            "system events (network shares, some containers).",
        ),
    ] = False,
) -> None:
    """Index FOLDER... now, then keep the collection in sync as files appear, change or go:
    new files are searchable about a second after they are closed; one line per batch."""
    from lookalike.collection import Collection
    from lookalike.ingest.watch import Batch, Watcher

    missing = [str(f) for f in folders if not f.expanduser().is_dir()]
    if missing:
        validate.fail(f"no such folder: {', '.join(missing)}")
    path = collection or default_collection()

    def show(batch: Batch) -> None:
        if as_json:
            data = {
                "time": batch.started,
                "added": batch.added,
                "updated": batch.updated,
                "removed": batch.removed,
                "skipped": [{"path": p, "reason": r} for p, r in batch.skipped],
                "seconds": round(batch.seconds, 3),
            }
            print(json.dumps(data), flush=True)
        else:
            out.print(batch.summary(), soft_wrap=True, highlight=False)

    with errors(), Collection.open(path, create=True) as col:
        watcher = Watcher(col, folders, report=show, poll=poll)

        def stop(signum: int, _frame: object) -> None:
            watcher.request_stop()  # the loop ends after the batch under way
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, stop)
        err.print(f"watching {', '.join(str(f) for f in watcher.folders)} (Ctrl-C stops)")
        try:
            watcher.run()
        except KeyboardInterrupt:
            err.print("stopped")
        finally:
            signal.signal(signal.SIGTERM, previous)


def register(app: typer.Typer) -> None:
    """Add ``watch`` to ``app``."""
    app.command("watch")(watch_command)
