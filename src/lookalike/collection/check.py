"""Checking a collection, and repairing what can be repaired (``lookalike check [--repair]``).

What is checked, in the order a repair needs it:

1. **manifest.json** reads and holds what every manifest has. Repair: restore it from the copy
   the catalogue keeps (``manifest.MANIFEST_COPY``); the damaged file is kept beside it.
2. **The catalogue** (SQLite): exists, is not empty, ``PRAGMA integrity_check`` is clean and no
   row points at an image that does not exist. Repair: every readable row is copied into a new
   catalogue (``store.sqlite.salvage``) and the damaged file is kept beside it, renamed
   ``catalogue.sqlite.damaged-<time>``; what could not be saved is reported (files whose rows
   were lost are indexed again by the next ``lookalike index`` of their folder).
3. **Every space** has a vector for every image. Repair: the missing ones are computed from the
   stored files (``Collection.complete_spaces``); images whose files are gone are reported.
4. **Every index file** loads and holds as many vectors as the catalogue. Repair: rebuilt from
   the catalogue and saved. An index behind the catalogue (a killed run) is only a note: it is
   rebuilt on first use anyway.
5. **The format**: a collection of an older format (``manifest.FORMAT_VERSION``) is a note (it
   reads as it is; its next writer upgrades it), one whose upgrade was killed half-way (some
   vectors re-encoded, the manifest still old) a problem. Repair: the upgrade is run, or
   finished (``Collection.upgrade``), before the other repairs.

Leftover temporary files of killed writers are noted and removed by a repair. A repair holds
the collection's write lock (another writer at work: BusyError).

Example:
    >>> report = check_collection("photos.lookalike", repair=True)  # doctest: +SKIP
    >>> report.healthy  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lookalike.collection.core import Collection
from lookalike.collection.lock import WriteLock
from lookalike.collection.manifest import (
    FORMAT_VERSION,
    MANIFEST_COPY,
    parse_manifest,
    read_manifest,
    saved_generation,
)
from lookalike.errors import CatalogueError, CollectionError
from lookalike.fileio import stale_temporaries, write_json
from lookalike.index import load_index
from lookalike.store import sqlite as sqlite_store

Progress = Callable[[int, int], None]


@dataclass
class Finding:
    """One thing found: the ``part`` (manifest, catalogue, space:NAME, index:NAME, files),
    what is wrong, whether it is only a ``note`` (nothing to fix) and whether it was
    ``repaired``."""

    part: str
    problem: str
    note: bool = False
    repaired: bool = False

    def to_dict(self) -> dict:
        return {
            "part": self.part,
            "problem": self.problem,
            "severity": "note" if self.note else "problem",
            "repaired": self.repaired,
        }


@dataclass
class CheckReport:
    """What :func:`check_collection` found and did; ``lost``: what a repair could not save."""

    path: str
    repair: bool
    findings: list[Finding] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def problems(self) -> list[Finding]:
        """Problems not repaired (notes left out)."""
        return [f for f in self.findings if not f.note and not f.repaired]

    @property
    def healthy(self) -> bool:
        return not self.problems

    def add(self, part: str, problem: str, *, note: bool = False) -> Finding:
        finding = Finding(part, problem, note=note)
        self.findings.append(finding)
        return finding

    def to_dict(self) -> dict:
        return {
            "collection": self.path,
            "healthy": self.healthy,
            "repair": self.repair,
            "findings": [f.to_dict() for f in self.findings],
            "lost": self.lost,
            "seconds": round(self.seconds, 3),
        }


def check_collection(
    path: str | Path, *, repair: bool = False, progress: Progress | None = None
) -> CheckReport:
    """Check the collection in ``path``; with ``repair``, repair what can be repaired (see the
    module's docstring). Never raises for damage it finds: it reports it.

    Raises:
        CollectionError: ``path`` holds no collection.
        BusyError: ``repair`` while another writer holds the collection.
    """
    start = time.perf_counter()
    path = Path(path).expanduser()
    report = CheckReport(str(path), repair)
    if not (path / "manifest.json").exists() and not (path / "catalogue.sqlite").exists():
        raise CollectionError(f"no collection at {path}")
    if repair:
        with WriteLock(path):
            manifest = _check_files(path, report, repair=True)
    else:
        manifest = _check_files(path, report, repair=False)
    if manifest is not None and not report.problems:
        _check_collection(path, report, repair, progress)
    report.seconds = time.perf_counter() - start
    return report


# -- the files: manifest, catalogue, temporaries -----------------------------------------------
def _check_files(path: Path, report: CheckReport, *, repair: bool) -> dict | None:
    """Check (and repair) the manifest and the catalogue; the manifest, or None."""
    for temporary in stale_temporaries(path):
        found = report.add("files", f"{temporary} was left by a killed writer", note=True)
        if repair:
            temporary.unlink(missing_ok=True)
            found.repaired = True
    manifest = _check_manifest(path, report, repair)
    catalogue = (manifest or {}).get("catalogue")
    if catalogue is not None and str(catalogue).startswith(("postgresql://", "postgres://")):
        _check_server_catalogue(str(catalogue), report)
    else:
        file = path / "catalogue.sqlite"
        if catalogue is not None:
            file = Path(str(catalogue).removeprefix("sqlite://")).expanduser()
        _check_sqlite(path, file, report, repair)
    if manifest is None and repair:  # the catalogue may now hold its copy
        manifest = _restore_manifest(path, report)
    return manifest


def _check_manifest(path: Path, report: CheckReport, repair: bool) -> dict | None:
    try:
        return read_manifest(path)
    except CollectionError as exc:
        if not (path / "manifest.json").exists():
            report.add("manifest", f"{path / 'manifest.json'} is missing")
        else:
            report.add("manifest", str(exc))
        return None


def _restore_manifest(path: Path, report: CheckReport) -> dict | None:
    finding = next(f for f in report.findings if f.part == "manifest")
    file = path / "catalogue.sqlite"
    copy = None
    if file.exists() and not sqlite_store.verify(file):
        try:
            store = sqlite_store.SQLiteCatalogue(file, create=False)
            try:
                copy = store.get_meta(MANIFEST_COPY)
            finally:
                store.close()
        except CatalogueError:
            copy = None
    if copy is None:
        report.lost.append(
            "manifest.json: the catalogue keeps no copy of it; rebuild the collection "
            "(`lookalike index FOLDER --collection NEW_DIR`)"
        )
        return None
    try:
        manifest = parse_manifest(json.loads(copy), path)
    except (ValueError, CollectionError):
        report.lost.append("manifest.json: the catalogue's copy of it is damaged too")
        return None
    target = path / "manifest.json"
    if target.exists():
        target.rename(_aside(target))
    write_json(target, manifest)
    finding.repaired = True
    finding.problem += " (restored from the catalogue's copy)"
    return manifest


def _check_server_catalogue(uri: str, report: CheckReport) -> None:
    from lookalike.store import open_catalogue

    try:
        store = open_catalogue(uri, create=False)
        try:
            store.count()
        finally:
            store.close()
    except CatalogueError as exc:
        report.add("catalogue", str(exc))


def _check_sqlite(path: Path, file: Path, report: CheckReport, repair: bool) -> None:
    problems = sqlite_store.verify(file)
    if not problems:
        return
    findings = [report.add("catalogue", problem) for problem in problems]
    if not repair:
        return
    empty = not file.exists() or file.stat().st_size == 0
    new = file.with_name(file.name + ".repairing")
    for leftover in (new, *_companions(new)):
        leftover.unlink(missing_ok=True)
    if empty:
        sqlite_store.SQLiteCatalogue(new).close()
        report.lost.append(
            f"{file} was {'missing' if not file.exists() else 'empty'}: every image record is "
            "lost; index the folders again (`lookalike index FOLDER --collection "
            f"{path}`)"
        )
    else:
        saved = sqlite_store.salvage(file, new)
        _report_salvage(saved, file, path, report)
    if file.exists():
        aside = _aside(file)
        for companion, suffix in zip(_companions(file), ("-wal", "-shm"), strict=True):
            if companion.exists():
                companion.rename(aside.with_name(aside.name + suffix))
        file.rename(aside)
        report.lost.append(f"the damaged catalogue is kept as {aside}")
    os.replace(new, file)
    for stamp in (path / "index").glob("*.json"):  # every index is rebuilt from the new one
        stamp.unlink(missing_ok=True)
    if not sqlite_store.verify(file):
        for finding in findings:
            finding.repaired = True


def _report_salvage(saved, file: Path, path: Path, report: CheckReport) -> None:
    for table, lost in saved.lost.items():
        if lost < 0:
            report.lost.append(f"{file}: the {table} table could not be read at all")
        elif lost:
            report.lost.append(f"{file}: {lost} {table} rows could not be read")
    if saved.orphan_files:
        shown = ", ".join(saved.orphan_files[:5])
        more = f" and {len(saved.orphan_files) - 5} more" if len(saved.orphan_files) > 5 else ""
        report.lost.append(
            f"{len(saved.orphan_files)} files lost their image ({shown}{more}); "
            f"`lookalike index FOLDER --collection {path}` indexes them again"
        )
    elif saved.lost.get("files") or saved.lost.get("images"):
        report.lost.append(
            f"files whose rows were lost are indexed again by `lookalike index FOLDER "
            f"--collection {path}`"
        )


def _companions(file: Path) -> tuple[Path, Path]:
    return file.with_name(file.name + "-wal"), file.with_name(file.name + "-shm")


def _aside(file: Path) -> Path:
    """A new name for a damaged file, kept beside it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = file.with_name(f"{file.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        target = file.with_name(f"{file.name}.damaged-{stamp}-{n}")
        n += 1
    return target


# -- the open collection: spaces and index files -----------------------------------------------
def _check_collection(
    path: Path, report: CheckReport, repair: bool, progress: Progress | None
) -> None:
    try:
        col = Collection.open(path)
    except CollectionError as exc:
        report.add("collection", str(exc))
        return
    with col:
        upgrade = _check_format(col, report)
        # Index files first: a damaged one is moved out of the way before completing a space
        # rebuilds its index.
        if repair:
            with col.writing():  # which upgrades an older format first
                if upgrade is not None:
                    upgrade.repaired = col.manifest["format_version"] == FORMAT_VERSION
                _check_indexes(col, report, repair)
                _check_spaces(col, report, repair, progress)
                for space in col.spaces():  # every index current and saved
                    col.index(space)
                col.save_indexes()
        else:
            _check_indexes(col, report, repair)
            _check_spaces(col, report, repair, progress)


def _check_format(col: Collection, report: CheckReport) -> Finding | None:
    """A note for a collection of an older format, a problem for one whose upgrade stopped
    half-way (its vectors partly re-encoded); None when it is of the current format."""
    version = int(col.manifest.get("format_version", 1))
    if version >= FORMAT_VERSION:
        return None
    stats = col.catalogue.vector_stats()
    total = sum(e["vectors"] for by in stats.values() for e in by.values())
    old = sum(by.get("float32", {}).get("vectors", 0) for by in stats.values())
    finish = f"`lookalike check --repair --collection {col.path}` or its next `lookalike index`"
    if old < total:
        return report.add(
            "format",
            f"the upgrade from collection format {version} to {FORMAT_VERSION} was interrupted "
            f"({total - old} of {total} vectors re-encoded): {finish} finishes it",
        )
    size = sum(e["bytes"] for by in stats.values() for e in by.values())
    return report.add(
        "format",
        f"collection format {version} ({total} vectors at full precision, {size / 1e6:.1f} MB): "
        f"{finish} upgrades it to format {FORMAT_VERSION} (compact vectors)",
        note=True,
    )


def _check_spaces(
    col: Collection, report: CheckReport, repair: bool, progress: Progress | None
) -> None:
    images = len(col)
    missing = col.spaces_missing()
    findings = {
        space: report.add(f"space:{space}", f"{n} of {images} images have no vector")
        for space, n in missing.items()
    }
    if not repair or not findings:
        return
    done = col.complete_spaces(progress=progress)
    left = col.spaces_missing()
    for space, finding in findings.items():
        if space not in left:
            finding.repaired = True
        else:
            finding.problem += f"; {left[space]} still have none"
    if done.unreadable:
        shown = ", ".join(done.missing[:5])
        report.lost.append(
            f"{len(done.unreadable)} images could not be read again (their files are gone or "
            f"changed: {shown}); `lookalike index FOLDER --collection {col.path}` drops or "
            "re-adds them"
        )


def _check_indexes(col: Collection, report: CheckReport, repair: bool) -> None:
    generation = col.catalogue.generation()
    images = len(col)
    for space, spec in col.spaces().items():
        file = col.path / "index" / f"{space}.faiss"
        expected = images - len(col.catalogue.ids_missing(space))
        problem, note = _index_problem(file, spec, generation, expected)
        if problem is None:
            continue
        finding = report.add(f"index:{space}", problem, note=note)
        if repair:
            if not note:  # damaged: out of the way, so the rebuild does not try to load it
                file.unlink(missing_ok=True)
            file.with_suffix(".json").unlink(missing_ok=True)
            try:
                index = col.rebuild_index(space)
            except Exception as exc:  # reported, and the other spaces are still checked
                finding.problem += f"; rebuilding it failed: {exc}"
                continue
            finding.repaired = len(index) == expected


def _index_problem(
    file: Path, spec: dict, generation: int, expected: int
) -> tuple[str | None, bool]:
    """What is wrong with one index file, and whether it is only a note."""
    if not file.exists():
        return f"{file} is not saved yet (it is built on first use)", True
    saved = saved_generation(file.with_suffix(".json"))
    if saved != generation:
        return f"{file} is behind the catalogue (it is rebuilt on first use)", True
    try:
        index = load_index(spec["index"], file)
    except Exception as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{file} is damaged ({why[:200]})", False
    if len(index) != expected:
        return f"{file} holds {len(index)} vectors, the catalogue {expected}", False
    return None, False
