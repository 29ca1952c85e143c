"""docs/mobile-clients.md names only endpoints the service has."""

from __future__ import annotations

import re
from pathlib import Path

from flask.testing import FlaskClient

DOC = Path(__file__).resolve().parent.parent / "docs" / "mobile-clients.md"
# "`POST /v1/devices`", "PATCH /v1/devices/me" …: a method, then a path of the API.
ENDPOINT = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE) (/v1/[A-Za-z0-9_./{}-]*[A-Za-z0-9_}])")
ANY_PATH = re.compile(r"(?<![\w.])(/v1/[A-Za-z0-9_./{}-]*[A-Za-z0-9_}])")


def _openapi_paths(client: FlaskClient) -> dict[str, set[str]]:
    document = client.get("/openapi.json").get_json()
    return {path: {m.upper() for m in item} for path, item in document["paths"].items()}


def test_every_endpoint_the_mobile_clients_page_names_exists(client: FlaskClient) -> None:
    text = DOC.read_text(encoding="utf-8")
    paths = _openapi_paths(client)
    named = ENDPOINT.findall(text)
    assert len(named) >= 8, "the page names endpoints as 'METHOD /path'"
    for method, path in named:
        assert path in paths, f"{method} {path}: no such path in /openapi.json"
        assert method in paths[path], f"{method} {path}: no such operation in /openapi.json"
    # A path named without its method must exist too.
    for path in ANY_PATH.findall(text):
        assert path in paths, f"{path}: no such path in /openapi.json"


def test_the_check_catches_an_endpoint_that_does_not_exist(client: FlaskClient) -> None:
    paths = _openapi_paths(client)
    [(method, path)] = ENDPOINT.findall("call `DELETE /v1/devices/me/everything` to reset")
    assert path not in paths
    [(method, path)] = ENDPOINT.findall("`GET /v1/devices` lists nothing")
    assert method not in paths[path]
