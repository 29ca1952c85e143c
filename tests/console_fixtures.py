"""Fixtures for the staff console: enrolled staff people and signed-in test clients."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient

from mobile_api.extensions import db
from mobile_api.services import staff as staff_service

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass(frozen=True, slots=True)
class Person:
    """An enrolled staff member and what they sign in with."""

    email: str
    role: str
    totp_secret: str
    password: str = PASSWORD

    def code(self, steps_ahead: int = 0) -> str:
        """The authenticator's code `steps_ahead` 30-second steps from now."""
        return pyotp.TOTP(self.totp_secret).at(time.time() + 30 * steps_ahead)


def enrol(app: Flask, email: str, role: str) -> Person:
    """Create and enrol a staff member through the service (the code one step back)."""
    with app.app_context():
        _, link = staff_service.create(db.session, email, role, link_ttl=timedelta(hours=1))
        secret = staff_service.enrolment(db.session, link).totp_secret
        # The previous step's code (accepted for clock drift): the current one stays
        # unused for the first sign-in.
        staff_service.complete_enrolment(
            db.session, link, PASSWORD, PASSWORD, pyotp.TOTP(secret).at(time.time() - 30)
        )
    return Person(email, role, secret)


def csrf_of(html: str) -> str:
    """The CSRF token in a page's first form."""
    found = _CSRF.search(html)
    assert found, "no form with a CSRF token on this page"
    return found.group(1)


def sign_in(client: FlaskClient, person: Person, steps_ahead: int = 0) -> None:
    """Sign a test client in as `person` through the sign-in form."""
    token = csrf_of(client.get("/console/sign-in").get_data(as_text=True))
    response = client.post(
        "/console/sign-in",
        data={
            "csrf_token": token,
            "email": person.email,
            "password": person.password,
            "code": person.code(steps_ahead),
        },
    )
    assert response.status_code == 303, response.get_data(as_text=True)


@pytest.fixture
def person(app: Flask) -> Callable[[str], Person]:
    """Enrol a staff member of a role: person("support")."""
    counter = iter(range(1000))

    def make(role: str, email: str | None = None) -> Person:
        return enrol(app, email or f"{role}{next(counter)}@example.com", role)

    return make


@pytest.fixture
def staff_client(app: Flask, person: Callable[[str], Person]) -> Callable[[str], FlaskClient]:
    """A test client signed in as a new staff member of a role."""

    def make(role: str) -> FlaskClient:
        client = app.test_client()
        sign_in(client, person(role))
        return client

    return make


def post_form(client: FlaskClient, page: str, action: str, data: dict[str, str]) -> object:
    """Submit a form of `page` to `action` with the page's CSRF token, as a browser would."""
    token = csrf_of(client.get(page).get_data(as_text=True))
    return client.post(action, data={"csrf_token": token, **data})
