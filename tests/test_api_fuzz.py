"""Schemathesis against the server's OpenAPI schema: whatever it sends, no 5xx, and every
error is JSON ``{"error": ...}``."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from .test_server import ADMIN, auth, make_app, new_catalog  # noqa: E402

EXAMPLES = 8


def test_no_server_errors(tmp_path, embedder):
    from fastapi.testclient import TestClient

    app = make_app(tmp_path / "data", embedder, allow_private_urls=False)
    with TestClient(app) as client:
        new_catalog(client)  # so that listings have something to show
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case) -> None:
            for headers in (auth(ADMIN), {}):
                response = case.call(headers=headers)
                where = (case.method, case.formatted_path, response.text[:200])
                assert response.status_code < 500, where
                if response.status_code >= 400:
                    assert "error" in response.json(), where

        check()
