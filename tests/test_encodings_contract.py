"""The vector encodings (issue #19, ``store.encoding``) as every store keeps them: vectors written
through the catalogue API and read back from SQLite and from PostgreSQL (a real server, started
by ``tests.test_catalogue_contract``'s fixture; skipped when PostgreSQL is not installed), each
within its encoding's error bound, with its dimension, its zeros and its negative values; ids with
and without a vector; rows of format 1 (float32) beside encoded ones, as an upgrade not yet done
leaves them; and a collection built with each encoding finding what float32 finds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lookalike import Collection
from lookalike.models.text import ConSE
from lookalike.store import FileState, NewImage, open_catalogue
from lookalike.store.encoding import as_stored
from tests.test_catalogue_contract import (  # noqa: F401 - the PostgreSQL server fixture
    fresh_postgres_uri,
    postgres_server,
)

ENCODINGS = ("float32", "float16", "int8", "int8z", "sparse:24")
#: Dimensions tried: odd and even, a blob whose length would be a multiple of 4 (padded), the
#: default descriptor's.
DIMS = (1, 3, 9, 64, 2280)
HALF = 2.0**-11  # float16's relative precision (round to nearest)
TINY = 2.0**-24  # float16's smallest subnormal


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path: Path) -> str:
    """Where a fresh, empty catalogue lives, for each store."""
    if request.param == "sqlite":
        return str(tmp_path / "catalogue.sqlite")
    return fresh_postgres_uri(request.getfixturevalue("postgres_server"))


@pytest.fixture
def catalogue(location: str):
    cat = open_catalogue(location)
    yield cat
    cat.close()


def _vectors(dim: int, seed: int) -> np.ndarray:
    """Rows meant to trip an encoding: all zeros; one negative entry; mixed signs with exact
    zeros; one large entry among small ones; values of norm 40 (not unit); tiny values."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((8, dim)).astype(np.float32)
    rows[0] = 0.0
    rows[1] = 0.0
    rows[1, dim // 2] = -0.75
    rows[2, ::3] = 0.0
    rows[3] *= 0.01
    rows[3, 0] = -3.0
    rows[4] *= 40.0 / max(float(np.linalg.norm(rows[4])), 1e-9)
    rows[5] *= 1e-3
    rows[6:] /= np.linalg.norm(rows[6:], axis=1, keepdims=True)
    return rows


def _image(i: int, vectors: dict[str, np.ndarray]) -> NewImage:
    return NewImage(f"{i:032x}", f"/photos/{i}.jpg", FileState(100, i), 8, 6, vectors)


def assert_within_encoding(encoding: str, original: np.ndarray, back: np.ndarray) -> None:
    """``back`` is ``original`` to ``encoding``'s precision, row by row."""
    assert back.dtype == np.float32 and back.shape == original.shape
    assert np.all(back[original == 0] == 0), "a zero came back non-zero"
    assert np.all(back * original >= 0), "a value came back with its sign flipped"
    if encoding == "float32":
        assert np.array_equal(back, original)
        return
    for v, b in zip(original, back, strict=True):
        if encoding == "float16":
            assert np.all(np.abs(b - v) <= np.abs(v) * HALF + TINY)
        elif encoding in ("int8", "int8z"):
            step = float(np.abs(v).max()) / 127  # one code
            assert np.all(np.abs(b - v) <= step + 1e-7)
            assert np.linalg.norm(b) == pytest.approx(np.linalg.norm(v), rel=1e-5, abs=1e-30)
            assert np.all(b[v < -0.51 * step] < 0), "a negative value was lost"
        else:  # sparse:T: the T largest in magnitude, at float16
            top = int(encoding.partition(":")[2])
            kept = b != 0
            assert kept.sum() == min(top, np.count_nonzero(v))
            assert np.all(np.abs(b[kept] - v[kept]) <= np.abs(v[kept]) * HALF + TINY)
            if (~kept).any() and kept.any():
                assert np.abs(v[~kept]).max() <= np.abs(v[kept]).min()


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_vectors_come_back_within_their_encoding(catalogue, encoding: str) -> None:
    spaces = {f"d{dim}": _vectors(dim, dim) for dim in DIMS}
    for space in spaces:
        catalogue.set_encoding(space, encoding)
    ids = catalogue.add_images([_image(i, {s: v[i] for s, v in spaces.items()}) for i in range(8)])
    for space, original in spaces.items():
        back = catalogue.vectors(space, ids)
        assert back.shape == original.shape  # the dimension
        assert_within_encoding(encoding, original, back)
        assert np.array_equal(back, as_stored(original, encoding))  # what an index is given
        assert not back[0].any()  # an all-zero vector stays one
        assert back[1].min() < 0 and np.count_nonzero(back[1]) == 1
        reversed_ids = ids[::-1]  # rows in the order asked, whatever the store's
        assert np.array_equal(catalogue.vectors(space, reversed_ids), back[::-1])
        chunks = list(catalogue.iter_vectors(space, batch=3))
        assert [len(i) for i, _ in chunks] == [3, 3, 2]
        assert np.concatenate([i for i, _ in chunks]).tolist() == sorted(ids)
        assert np.array_equal(np.concatenate([v for _, v in chunks]), back)
    name = encoding.partition(":")[0]
    stats = catalogue.vector_stats()
    assert {s: set(stats[s]) for s in spaces} == {s: {name} for s in spaces}
    assert all(stats[s][name]["vectors"] == 8 for s in spaces)

    # Replaced in place, in the encoding too.
    catalogue.put_vectors("d64", ids[2:3], -spaces["d64"][6:7])
    assert_within_encoding(encoding, -spaces["d64"][6:7], catalogue.vectors("d64", ids[2:3]))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_ids_with_and_without_vectors(catalogue, encoding: str) -> None:
    catalogue.set_encoding("image", encoding)
    catalogue.set_encoding("text", encoding)
    both = _vectors(64, 1)
    ids = catalogue.add_images(
        [_image(i, {"image": both[i], "text": both[i]}) for i in range(4)]
        + [_image(i, {"image": both[i]}) for i in range(4, 6)]  # no text vector yet
    )
    assert catalogue.ids_missing("image") == []
    assert catalogue.ids_missing("text") == ids[4:]
    assert catalogue.vector_counts() == {"image": 6, "text": 4}
    with pytest.raises(KeyError):
        catalogue.vectors("text", [ids[0], ids[5]])
    with pytest.raises(KeyError):
        catalogue.vectors("image", [max(ids) + 1000])
    with pytest.raises(KeyError):
        catalogue.vectors("copy", ids[:1])  # a space nothing was written to
    assert catalogue.vectors("image", []).shape[0] == 0
    catalogue.put_vectors("text", ids[4:], both[4:6])
    assert catalogue.ids_missing("text") == []
    assert_within_encoding(encoding, both[4:6], catalogue.vectors("text", ids[4:]))
    catalogue.remove_files(["/photos/0.jpg"])  # the image goes, and its vectors
    with pytest.raises(KeyError):
        catalogue.vectors("image", ids[:1])
    assert catalogue.vector_counts() == {"image": 5, "text": 5}


def _tagged_float32(tag: bytes, seed: int) -> np.ndarray:
    """A float32 vector whose stored bytes (format 1's raw floats) start with ``tag``."""
    v = np.random.default_rng(seed).standard_normal(64).astype(np.float32)
    bits = v.view(np.uint32)
    bits[0] = (bits[0] & 0xFFFFFF00) | tag[0]
    assert v.tobytes()[:1] == tag
    return v


@pytest.mark.parametrize("encoding", ["int8", "int8z"])
def test_format_1_rows_beside_encoded_ones(catalogue, encoding: str) -> None:
    """A collection being upgraded holds float32 rows and encoded rows in one space; a float32
    row whose first byte happens to be the encoding's tag byte is still read as float32."""
    tag = b"q" if encoding == "int8" else b"z"
    old = np.stack([_tagged_float32(tag, s) for s in range(3)])
    old_ids = catalogue.add_images([_image(i, {"image": v}) for i, v in enumerate(old)])
    catalogue.set_encoding("image", encoding)
    new = _vectors(64, 7)[6:]
    new_ids = catalogue.add_images([_image(10 + i, {"image": v}) for i, v in enumerate(new)])
    mixed = [new_ids[0], old_ids[0], new_ids[1], old_ids[1], old_ids[2]]
    back = catalogue.vectors("image", mixed)
    assert np.array_equal(back[[1, 3, 4]], old)
    assert_within_encoding(encoding, new, back[[0, 2]])
    assert np.array_equal(catalogue.vectors("image", old_ids[:1] + new_ids)[0], old[0])
    everything = np.concatenate([v for _, v in catalogue.iter_vectors("image")])
    assert np.array_equal(everything[:3], old)
    assert catalogue.reencode("image") == 3
    assert_within_encoding(encoding, old, catalogue.vectors("image", old_ids))


# -- a collection built with each encoding ---------------------------------------------------
def _descriptors(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(descriptors as the default model fuses them, their class probabilities): pooled
    features and a few likely classes an image, each class of ``CLASSES`` the most likely of a
    quarter of the images, more so the later the image."""
    rng = np.random.default_rng(seed)
    features = np.maximum(rng.standard_normal((n, 1280)), 0).astype(np.float32)
    logits = rng.standard_normal((n, 1000)).astype(np.float32)
    for i in range(n):
        logits[i, rng.choice(1000, 3, replace=False)] += 6.0
        logits[i, CLASSES[i % len(CLASSES)]] += 2.0 + 0.12 * i  # no near ties in text search
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    fused = np.concatenate([unit, 0.5 * np.sqrt(probs)], axis=1) / np.sqrt(1.25)
    return fused.astype(np.float32), probs


#: ImageNet classes whose names the text queries use (tabby, goldfish, school bus, volcano).
CLASSES = (281, 1, 779, 980)
QUERIES = ("a tabby cat", "a goldfish", "a yellow school bus", "a volcano")


def _collection(path: Path, location: str, embedder, encoding: str) -> Collection:
    """A collection of 60 synthetic images whose image and text spaces are stored in
    ``encoding`` (``sparse:T``: the text space as shipped, sparse:96, and the image space in
    sparse:1024, the descriptor's 2280 entries less its smallest)."""
    with Collection.create(path, embedder=embedder, catalogue=location):
        pass
    manifest = json.loads((path / "manifest.json").read_text())
    sparse = encoding.startswith("sparse")
    manifest["spaces"]["image"]["encoding"] = "sparse:1024" if sparse else encoding
    manifest["spaces"]["text"]["encoding"] = "sparse:96" if sparse else encoding
    (path / "manifest.json").write_text(json.dumps(manifest))
    descriptors, probs = _descriptors(60)
    text = ConSE().image_vectors(np.log(np.clip(probs, 1e-30, None)))
    col = Collection.open(path, embedder=embedder)
    col.catalogue.add_images(
        [_image(i, {"image": descriptors[i], "text": text[i]}) for i in range(60)]
    )
    for space in col.spaces():
        col.index(space)
    col.save_indexes()
    return col


def _top1(col: Collection, queries: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """Top-1 ids: image queries as shipped (α-QE), without expansion, and text queries."""
    shipped = [r[0].id for r in col.search_vectors(queries, 5)]
    plain = [r[0].id for r in col.search_vectors(queries, 5, expand=0)]
    text = [col.search_text(q, k=3)[0].id for q in QUERIES]
    return shipped, plain, text


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
@pytest.mark.parametrize("encoding", ENCODINGS[1:])
def test_a_collection_in_each_encoding_finds_what_float32_finds(
    request, store: str, tmp_path: Path, embedder, encoding: str
) -> None:
    def location(name: str) -> str:
        if store == "sqlite":
            return str(tmp_path / f"{name}.sqlite")
        return fresh_postgres_uri(request.getfixturevalue("postgres_server"))

    descriptors, _ = _descriptors(60)
    rng = np.random.default_rng(5)
    picked = rng.choice(60, 12, replace=False)
    noise = np.exp(0.3 * rng.standard_normal((12, 2280))).astype(np.float32)
    queries = descriptors[picked] * noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    found = {}
    for name in ("float32", encoding):
        with _collection(tmp_path / name, location(name), embedder, name) as col:
            stats = col.catalogue.vector_stats()
            assert set(stats["image"]) == set(stats["text"]) == {name.partition(":")[0]}
            path_of = {i: p for p, (_, i) in col.catalogue.file_states().items()}
            found[name] = [[path_of[i] for i in part] for part in _top1(col, queries)]
    expected, got = found["float32"], found[encoding]
    assert got[0] == expected[0], "image search (α-QE) differs from float32's"
    assert got[1] == expected[1], "image search differs from float32's"
    assert got[2] == expected[2], "text search differs from float32's"
    assert got[1] == [f"/photos/{i}.jpg" for i in picked]  # each query finds its own image
