"""Domain errors are plain exceptions; the web layer's one table maps each to HTTP."""

from __future__ import annotations

import inspect

from werkzeug.exceptions import HTTPException

from mobile_api import errors
from mobile_api.http_errors import DOMAIN_ERRORS


def _domain_errors() -> list[type[errors.DomainError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.DomainError)
    ]


def test_domain_errors_know_nothing_of_http() -> None:
    for cls in _domain_errors():
        assert not issubclass(cls, HTTPException), cls
    source = inspect.getsource(errors)
    for web in ("flask", "werkzeug", "marshmallow"):
        assert f"import {web}" not in source and f"from {web}" not in source


def test_every_domain_error_has_its_own_row_and_identifier() -> None:
    missing = [cls.__name__ for cls in _domain_errors() if cls not in DOMAIN_ERRORS]
    assert missing == []
    identifiers = [identifier for _, identifier, _ in DOMAIN_ERRORS.values()]
    assert len(identifiers) == len(set(identifiers))
    for code, identifier, message in DOMAIN_ERRORS.values():
        assert 400 <= code < 600 and identifier.islower() and message.endswith(".")


def test_a_refusal_raised_by_a_service_gets_its_row(client, app) -> None:
    response = client.get("/v1/devices/me", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.get_json() == {
        "code": 401,
        "status": "Unauthorized",
        "error": "unauthenticated",
        "message": DOMAIN_ERRORS[errors.Unauthenticated][2],
    }
