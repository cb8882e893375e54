"""Incremental index saves (``lookalike.index.log``): a ``flat`` index written whole once, then
its changes appended to a log, read back up to the stamp's generation; a torn tail, a log that
belongs to another base, a reader in another process while a writer appends and compacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import faiss
import numpy as np
import pytest
from PIL import Image

from lookalike import Collection
from lookalike.errors import VectorIndexError
from lookalike.index import create_index, load_index
from lookalike.index import log as index_log
from lookalike.index.log import HEAD_BYTES, load_saved, log_file, save_index

DIM = 8


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def contents(index) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) in storage order."""
    inner = getattr(index, "inner", index)
    ids = faiss.vector_to_array(inner.index.id_map).astype(np.int64)
    flat = faiss.downcast_index(inner.index.index)
    dim = inner.dim
    vectors = faiss.rev_swig_ptr(flat.get_xb(), len(ids) * dim).reshape(-1, dim).copy()
    return ids, vectors


def assert_same(a, b) -> None:
    ids_a, vectors_a = contents(a)
    ids_b, vectors_b = contents(b)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(vectors_a, vectors_b)


def journal_of(index):
    """The log journal of an index or of the one it wraps (PCA, ``auto``)."""
    while not hasattr(index, "journal"):
        index = index.inner
    return index.journal


def random_changes(index, rng: np.random.Generator, next_id: int, steps: int) -> int:
    """Adds (new ids and replacements) and removes (present and unknown ids)."""
    for _ in range(steps):
        present = faiss.vector_to_array(index.index.id_map)
        roll = rng.random()
        if roll < 0.5 or len(present) == 0:
            n = int(rng.integers(1, 4))
            index.add(np.arange(next_id, next_id + n), unit(rng, n))
            next_id += n
        elif roll < 0.7:
            again = rng.choice(present, size=min(2, len(present)), replace=False)
            index.add(again, unit(rng, len(again)))
        else:
            gone = rng.choice(present, size=min(2, len(present)), replace=False)
            index.remove(np.concatenate([gone, [10**9]]))
    return next_id


def test_appends_and_removes_reload_as_a_whole_save(tmp_path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "image.faiss"
    live = create_index("flat", DIM)
    live.add(np.arange(200), unit(rng, 200))
    live.save(path, generation=1)
    assert not live.journal.appended
    base_inode, base_bytes = path.stat().st_ino, path.stat().st_size
    assert log_file(path).stat().st_size == HEAD_BYTES
    next_id = 200
    for generation in range(2, 12):
        next_id = random_changes(live, rng, next_id, 5)
        before = log_file(path).stat().st_size
        live.save(path, generation=generation)
        assert live.journal.appended
        grown = log_file(path).stat().st_size - before
        assert 0 < grown < 2000  # the changes, not the index
        assert (path.stat().st_ino, path.stat().st_size) == (base_inode, base_bytes)

        loaded = load_saved("flat", path, generation)
        assert_same(loaded, live)
        copy = create_index("flat", DIM)
        copy.add(*contents(live))
        whole = tmp_path / f"whole-{generation}.faiss"
        copy.save(whole)  # no generation: written whole, as before logs
        assert_same(load_index("flat", whole), loaded)
        queries = unit(rng, 5)
        for a, b in zip(loaded.search(queries, 7), live.search(queries, 7), strict=True):
            np.testing.assert_array_equal(a, b)

    # a save with nothing new writes nothing; the loaded copy appends where the live one did
    size = log_file(path).stat().st_size
    live.save(path, generation=11)
    assert log_file(path).stat().st_size == size
    reader = load_saved("flat", path, 11)
    reader.remove(np.array([3]))
    reader.add(np.array([5000]), unit(rng, 1))
    reader.save(path, generation=12)
    assert reader.journal.appended
    assert_same(load_saved("flat", path, 12), reader)
    # the one that did not see that append writes the base whole rather than append after it
    live.add(np.array([6000]), unit(rng, 1))
    live.save(path, generation=13)
    assert not live.journal.appended and path.stat().st_ino != base_inode
    assert_same(load_saved("flat", path, 13), live)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_save_of_removes_only_reloads(kind, tmp_path) -> None:
    rng = np.random.default_rng(8)
    path = tmp_path / "image.faiss"
    live = create_index(kind, DIM)
    live.add(np.arange(30), unit(rng, 30))
    save_index(live, path, 1)
    live.remove(np.array([4, 9]))
    save_index(live, path, 2)
    save_index(live, path, 3)  # a write that changed nothing here: an empty record
    assert live.journal.appended
    for upto, count in ((1, 30), (2, 28), (3, 28), (None, 28)):
        loaded = load_saved(kind, path, upto) if upto else load_index(kind, path)
        assert len(loaded) == count
    assert not {4, 9} & set(load_saved(kind, path, 3).search(unit(rng, 3), 30)[1].ravel().tolist())


def test_a_reader_reads_only_up_to_its_stamp(tmp_path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "image.faiss"
    live = create_index("flat", DIM)
    live.add(np.arange(10), unit(rng, 10))
    live.save(path, generation=4)
    states = {4: contents(live)}
    for generation in (5, 6, 9):
        live.add(np.array([100 + generation]), unit(rng, 1))
        live.remove(np.array([generation]))
        live.save(path, generation=generation)
        states[generation] = contents(live)
    for generation, (ids, vectors) in states.items():
        loaded = load_saved("flat", path, generation)
        got = contents(loaded)
        np.testing.assert_array_equal(got[0], ids)
        np.testing.assert_array_equal(got[1], vectors)
        # only the reader of the whole log may append to it
        assert (loaded.journal.binding is not None) == (generation == 9)
    with pytest.raises(VectorIndexError, match="behind"):
        load_saved("flat", path, 10)  # the stamp says 10: its record is missing


def test_a_torn_or_damaged_tail_is_left_out_and_makes_the_index_behind(tmp_path) -> None:
    rng = np.random.default_rng(2)
    path = tmp_path / "image.faiss"
    live = create_index("flat", DIM)
    live.add(np.arange(50), unit(rng, 50))
    live.save(path, generation=1)
    live.add(np.array([60]), unit(rng, 1))
    live.save(path, generation=2)
    at_2 = contents(live)
    end_2 = log_file(path).stat().st_size
    live.add(np.array([61, 62]), unit(rng, 2))
    live.save(path, generation=3)
    whole = log_file(path).read_bytes()

    for torn in (whole[:-1], whole[: end_2 + 5], whole[:-7] + bytes(7)):
        log_file(path).write_bytes(torn)
        with pytest.raises(VectorIndexError, match="behind"):
            load_saved("flat", path, 3)
        loaded = load_saved("flat", path, 2)  # what was whole is still read
        np.testing.assert_array_equal(contents(loaded)[0], at_2[0])
        assert loaded.journal.binding is None  # a torn tail is never appended after
        np.testing.assert_array_equal(contents(load_index("flat", path))[0], at_2[0])

    # a log that belongs to another base: a crash between a compaction's two renames (its
    # base written at generation 4 stands alone), or a base older than the stamp with it
    log_file(path).write_bytes(whole)
    other = create_index("flat", DIM)
    other.add(np.arange(3), unit(rng, 3))
    other.save(tmp_path / "other.faiss", generation=4)
    os.replace(tmp_path / "other.faiss", path)
    alone = load_saved("flat", path, 3)
    assert len(alone) == 3 and alone.journal.binding is None
    with pytest.raises(VectorIndexError, match="is not of"):
        load_saved("flat", path, 5)


def test_an_index_saved_before_logs_loads_and_its_next_save_is_whole(tmp_path) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "image.faiss"
    old = create_index("flat", DIM)
    old.add(np.arange(20), unit(rng, 20))
    faiss.write_index(old.index, str(path))  # as lookalike wrote it before logs
    log_file(path).write_bytes(b"stale")  # and a leftover log is never applied
    loaded = load_saved("flat", path, 7)
    assert_same(loaded, old)
    loaded.add(np.array([99]), unit(rng, 1))
    loaded.save(path, generation=8)
    assert not loaded.journal.appended
    assert_same(load_saved("flat", path, 8), loaded)


def test_compaction_writes_a_new_base_and_empties_the_log(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(index_log, "MIN_LOG_BYTES", 0)
    monkeypatch.setattr(index_log, "COMPACT_FRACTION", 0.05)
    rng = np.random.default_rng(4)
    path = tmp_path / "image.faiss"
    live = create_index("flat", DIM)
    live.add(np.arange(1000), unit(rng, 1000))
    live.save(path, generation=1)
    tokens = {live.journal.binding.token}
    compactions = 0
    next_id = 1000
    for generation in range(2, 60):
        next_id = random_changes(live, rng, next_id, 3)
        live.save(path, generation=generation)
        assert log_file(path).stat().st_size <= 0.05 * path.stat().st_size + 1
        if not live.journal.appended:
            compactions += 1
            assert log_file(path).stat().st_size == HEAD_BYTES
            tokens.add(live.journal.binding.token)
        assert_same(load_saved("flat", path, generation), live)
    assert compactions >= 2 and len(tokens) == compactions + 1


def test_a_projected_index_rewrites_its_pca_only_with_a_new_base(tmp_path) -> None:
    from lookalike.descriptors import Whitening
    from lookalike.index.projected import ProjectedIndex, projection_file

    rng = np.random.default_rng(5)
    full = rng.standard_normal((300, 32)).astype(np.float32)
    path = tmp_path / "image.faiss"
    index = ProjectedIndex(create_index("flat", DIM), Whitening.fit(full, DIM, 0), 300)
    index.add(np.arange(300), full)
    save_index(index, path, 1)  # as the collection saves it
    pca = projection_file(path).stat()
    index.add(np.array([400]), full[:1])
    save_index(index, path, 2)
    assert index.inner.journal.appended
    assert projection_file(path).stat().st_mtime_ns == pca.st_mtime_ns
    assert_same(load_saved("flat", path, 2), index.inner)


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "lsh"])
def test_approximate_kinds_append_and_write_whole_after_a_rebuild(kind, tmp_path) -> None:
    rng = np.random.default_rng(6)
    path = tmp_path / "image.faiss"
    vectors = rng.standard_normal((1500, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    live = create_index(kind, 32, **({"min_train": 1000} if kind == "ivf" else {}))
    live.add(np.arange(1200), vectors[:1200])
    save_index(live, path, 1)
    assert not live.journal.appended and live.structure is not None
    files = {f: f.stat().st_mtime_ns for f in tmp_path.iterdir() if f.suffix != ".log"}
    for generation, first in enumerate(range(1200, 1300, 20), start=2):
        live.add(np.arange(first, first + 20), vectors[first : first + 20])
        live.remove(np.array([first - 1000, 5000]))
        save_index(live, path, generation)
        assert live.journal.appended
        assert {f: f.stat().st_mtime_ns for f in files} == files  # base files untouched
        loaded = load_saved(kind, path, generation)
        assert sorted(loaded.live_ids().tolist()) == sorted(live.live_ids().tolist())
        np.testing.assert_array_equal(
            loaded.search(vectors[:20], 5)[1], live.search(vectors[:20], 5)[1]
        )
    # an earlier stamp reads an earlier state; the base's own generation, the base alone
    assert len(load_saved(kind, path, 1)) == 1200
    # a rebuild (a quarter of the positions dead) is not a change a log can say: whole again
    live.remove(np.arange(0, 700))
    save_index(live, path, 20)
    assert not live.journal.appended
    loaded = load_saved(kind, path, 20)
    assert sorted(loaded.live_ids().tolist()) == sorted(live.live_ids().tolist())


@pytest.mark.parametrize("sidecar", ["vectors", "meta"])
def test_approximate_files_of_two_bases_are_never_read_together(sidecar, tmp_path) -> None:
    from lookalike.index import ann

    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((1200, 16)).astype(np.float32)
    path, other = tmp_path / "a" / "image.faiss", tmp_path / "b" / "image.faiss"
    for target in (path, other):
        index = create_index("ivf", 16, min_train=1000)
        index.add(np.arange(1200), vectors)
        save_index(index, target, 1)
    assert len(load_saved("ivf", path, 1)) == 1200
    file_of = getattr(ann, f"{sidecar}_file")
    os.replace(file_of(other), file_of(path))  # a crash half-way through a compaction
    with pytest.raises(VectorIndexError, match="is not of"):
        load_saved("ivf", path, 1)


WRITER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from pathlib import Path
    from lookalike.fileio import write_json
    from lookalike.index import create_index
    from lookalike.index import log
    log.MIN_LOG_BYTES, log.COMPACT_FRACTION = 0, 0.2
    path, rounds = Path(sys.argv[1]), int(sys.argv[2])

    def vector(i):
        x = np.random.default_rng(i).standard_normal(8).astype(np.float32)
        return x / np.linalg.norm(x)

    index = create_index("flat", 8)
    index.add(np.arange(100), np.stack([vector(i) for i in range(100)]))
    index.save(path, generation=0)
    write_json(path.with_suffix(".json"), {"generation": 0})
    print("ready", flush=True)
    for g in range(1, rounds + 1):
        index.add(np.array([100 + g]), vector(100 + g)[None])  # generation g adds 100 + g
        index.remove(np.array([g - 1]))  # and removes g - 1
        index.save(path, generation=g)
        write_json(path.with_suffix(".json"), {"generation": g})
    """
)


def test_a_reader_in_another_process_sees_base_and_log_consistently(tmp_path) -> None:
    path = tmp_path / "image.faiss"
    rounds = 400
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(rounds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout.readline().strip() == "ready", writer.stderr.read()

    def vector(i: int) -> np.ndarray:
        x = np.random.default_rng(i).standard_normal(8).astype(np.float32)
        return x / np.linalg.norm(x)

    reads, seen = 0, set()
    try:
        while True:
            done = writer.poll() is not None
            stamp = json.loads(path.with_suffix(".json").read_text())["generation"]
            index = load_saved("flat", path, stamp)
            ids, vectors = contents(index)
            # the state of one generation h >= the stamp (later only when a compaction
            # replaced the base since the stamp was read): 0..99 and 101..100+h less 0..h-1
            h = int(ids.max()) - 100 if ids.max() > 99 else 0
            assert h >= stamp
            expected = (set(range(100)) | set(range(101, 101 + h))) - set(range(h))
            np.testing.assert_array_equal(np.sort(ids), sorted(expected))
            np.testing.assert_array_equal(vectors, np.stack([vector(int(i)) for i in ids]))
            reads += 1
            seen.add(stamp)
            if done:
                break
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0, writer.stderr.read()
    assert reads > 5 and len(seen) > 3
    assert_same(load_saved("flat", path, rounds), load_index("flat", path))


def test_a_collection_appends_per_write_and_rebuilds_a_torn_log(tmp_path, photo_dir, embedder):
    photos = sorted(photo_dir.iterdir())
    folder = tmp_path / "col"
    with Collection.create(folder, embedder=embedder) as col:
        col.add(photos[:2])
        base = folder / "index" / "image.faiss"
        inode = base.stat().st_ino
        sizes = [log_file(base).stat().st_size]
        for photo in photos[2:]:
            col.add([photo])  # one upload, as the server makes it
            assert base.stat().st_ino == inode  # appended, not written again
            sizes.append(log_file(base).stat().st_size)
        assert sizes == sorted(set(sizes))
        col.remove([photos[0]])
        assert base.stat().st_ino == inode and log_file(base).stat().st_size > sizes[-1]
        generation = col.catalogue.generation()
        stamp = json.loads(base.with_suffix(".json").read_text())
        assert stamp["generation"] == generation and stamp["count"] == len(photos) - 1
        query = embedder.embed_images([Image.open(photos[3]).convert("RGB")])
        expected = [h.id for h in col.search_vectors(query, 3, expand=0)[0]]

    with Collection.open(folder, embedder=embedder) as reader:
        for space in reader.spaces():
            assert len(reader.index(space)) == len(photos) - 1
        assert journal_of(reader.index("image")).binding is not None  # base and log read whole
        assert [h.id for h in reader.search_vectors(query, 3, expand=0)[0]] == expected

    log_file(base).write_bytes(log_file(base).read_bytes()[:-3])  # a torn last record
    with Collection.open(folder, embedder=embedder) as reader:
        index = reader.index("image")
        assert len(index) == len(photos) - 1  # rebuilt from the catalogue
        assert journal_of(index).binding is None
        assert [h.id for h in reader.search_vectors(query, 3, expand=0)[0]] == expected


# -- the inverted index (the sparse text space) keeps a log too ------------------------------
def sparse_unit(rng: np.random.Generator, n: int, dim: int = 64, nnz: int = 6) -> np.ndarray:
    x = np.zeros((n, dim), np.float32)
    for row in x:
        row[rng.choice(dim, nnz, replace=False)] = rng.random(nnz) + 0.01
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def assert_same_answers(a, b, queries: np.ndarray) -> None:
    """Same size, same ids and scores for every query over everything held."""
    assert len(a) == len(b)
    for x, y in zip(a.search(queries, len(b)), b.search(queries, len(b)), strict=True):
        np.testing.assert_array_equal(x, y)


def test_the_inverted_index_appends_reopens_and_leaves_a_torn_tail_out(tmp_path) -> None:
    rng = np.random.default_rng(9)
    path = tmp_path / "text.faiss"
    queries = sparse_unit(rng, 6)
    live = create_index("inverted", 64, top=4)  # vectors of 6 entries: the 4 largest kept
    live.add(np.arange(300), sparse_unit(rng, 300))
    save_index(live, path, 1)
    assert not live.journal.appended and log_file(path).stat().st_size == HEAD_BYTES
    base = (path.stat().st_ino, path.stat().st_size)
    next_id = 300
    for generation in range(2, 9):  # adds, replacements, removes (unknown ids too)
        live.add(np.arange(next_id, next_id + 2), sparse_unit(rng, 2))
        live.add(np.array([generation * 7]), sparse_unit(rng, 1))
        live.remove(np.array([generation * 11, 10**9]))
        next_id += 2
        before = log_file(path).stat().st_size
        save_index(live, path, generation)
        assert live.journal.appended
        assert 0 < log_file(path).stat().st_size - before < 2000  # the changes, not the index
        assert (path.stat().st_ino, path.stat().st_size) == base
        assert_same_answers(load_saved("inverted", path, generation), live, queries)
    save_index(live, path, 9)  # nothing new: an empty record, for the stamp
    assert len(load_saved("inverted", path, 4)) == 300 + 3 * 2 - 3  # an earlier stamp
    at_9 = load_saved("inverted", path, 9)
    assert_same_answers(at_9, live, queries)

    # reopened: the reader appends where the writer left off, and the writer, which did not
    # see that append, writes the base whole rather than append after it
    assert at_9.journal.binding is not None
    at_9.remove(np.array([1, 2]))
    at_9.add(np.array([5000]), sparse_unit(rng, 1))
    save_index(at_9, path, 10)
    assert at_9.journal.appended and path.stat().st_ino == base[0]
    assert_same_answers(load_saved("inverted", path, 10), at_9, queries)
    base_bytes, whole = path.read_bytes(), log_file(path).read_bytes()

    # a torn or damaged last record: left out, the index behind its stamp (the collection
    # rebuilds it), what was whole still read, and never appended after
    for torn in (whole[:-1], whole[:-9] + b"\xff" * 9):  # (a sparse vector ends in zeros)
        path.write_bytes(base_bytes)
        log_file(path).write_bytes(torn)
        with pytest.raises(VectorIndexError, match="behind"):
            load_saved("inverted", path, 10)
        loaded = load_saved("inverted", path, 9)
        assert_same_answers(loaded, live, queries)
        assert loaded.journal.binding is None
        loaded.add(np.array([6000]), sparse_unit(rng, 1))
        save_index(loaded, path, 11)
        assert not loaded.journal.appended  # written whole: a new base, an empty log
        assert log_file(path).stat().st_size == HEAD_BYTES
        assert_same_answers(load_saved("inverted", path, 11), loaded, queries)

    # a log of another base (a crash between a compaction's two renames) is never applied
    log_file(path).write_bytes(whole)
    assert len(load_saved("inverted", path, 11)) == len(loaded)  # the new base stands alone
    with pytest.raises(VectorIndexError, match="is not of"):
        load_saved("inverted", path, 12)


def test_an_inverted_index_written_before_logs_loads_and_compacts(tmp_path, monkeypatch) -> None:
    from lookalike.index import inverted

    rng = np.random.default_rng(10)
    path = tmp_path / "text.faiss"
    old = create_index("inverted", 64, top=4)
    old.add(np.arange(50), sparse_unit(rng, 50))
    old._merge()
    header = {"kind": "inverted", "dim": 64, "top": 4, "options": {}}
    arrays = {
        "ids": old._ids,
        "alive": old._alive.view(np.uint8),
        "offsets": old._offsets,
        "positions": old._positions,
        "values": old._values,
    }
    inverted._write(str(path), header, arrays)  # as lookalike wrote it before logs
    queries = sparse_unit(rng, 4)
    loaded = load_saved("inverted", path, 3)
    assert_same_answers(loaded, old, queries)
    loaded.add(np.array([99]), sparse_unit(rng, 1))
    save_index(loaded, path, 4)
    assert not loaded.journal.appended  # its first save is whole
    assert_same_answers(load_saved("inverted", path, 4), loaded, queries)

    monkeypatch.setattr(index_log, "MIN_LOG_BYTES", 0)
    monkeypatch.setattr(index_log, "COMPACT_FRACTION", 0.5)
    compactions = 0
    for generation in range(5, 40):
        loaded.add(np.array([100 + generation]), sparse_unit(rng, 1))
        loaded.remove(np.array([generation]))
        save_index(loaded, path, generation)
        compactions += not loaded.journal.appended
        assert_same_answers(load_saved("inverted", path, generation), loaded, queries)
    assert compactions >= 2


def test_an_upload_appends_to_the_text_index_too(tmp_path, photo_dir, embedder) -> None:
    photos = sorted(photo_dir.iterdir())
    folder = tmp_path / "col"
    with Collection.create(folder, embedder=embedder) as col:
        col.add(photos[:2])
        text = folder / "index" / "text.faiss"
        inode = text.stat().st_ino
        assert col.index("text").params["kind"] == "inverted"
        for photo in photos[2:4]:
            col.add([photo])
            assert text.stat().st_ino == inode  # appended, not written again
        expected = col.search_text("a dog", k=3)
    with Collection.open(folder, embedder=embedder) as reader:
        assert journal_of(reader.index("text")).binding is not None
        assert reader.search_text("a dog", k=3) == expected
