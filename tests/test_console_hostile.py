"""Hostile input to the staff console, with every role, on SQLite and PostgreSQL: never a 5xx.

The forms are found as a browser finds them: every console route of the URL map is
opened (its path filled with real ids), and each <form> on the pages is read for its
action, its fields, their values and their choices; the query parameters a page reads
are taken from its view's source as well. Every POST route must have a form, so a
new page is fuzzed without touching this file.

Each request then sends hostile values - NUL bytes, invalid UTF-8 (what an unpaired
surrogate becomes on the wire), 100,000 characters, numbers out of range or not
numbers, dates that do not exist, repeated keys, unknown choices, missing or wrong
CSRF tokens, path segments that are not ids - and the answer is never a 5xx: a
refusal is an HTML page of the console (no JSON, no traceback) with a clear message,
or the form again with the field's error, and it leaves the stored data as it was.
"""

from __future__ import annotations

import inspect
import itertools
import os
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobile_api.extensions import db
from mobile_api.pagination import encode_cursor
from mobile_api.services import devices as device_service
from mobile_api.services import keys as key_service
from mobile_api.services import staff as staff_service
from mobile_api.services import support as support_service
from mobile_api.services.caller import CLI
from tests.campaign_fixtures import campaign_body
from tests.conftest import bearer, device_body, make_app, migrate_once, wipe
from tests.console_fixtures import PASSWORD, csrf_of, enrol, sign_in

ROLES = ("support", "privacy", "marketing", "admin")
ANONYMOUS = "anonymous"
# A refused request may still mark the session as used (it is not stored data).
_VOLATILE = {("staff_sessions", "last_seen_at")}
_DEVICE_ID = "device-[0-9a-z]{26}"


# -- the forms, as a browser sees them ------------------------------------------------


@dataclass
class Form:
    """One form (or a page's query parameters): where it goes, what it sends, its choices."""

    method: str
    endpoint: str
    rule: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    choices: dict[str, list[str]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Each field name once, in the order of the form (unchecked boxes too)."""
        return list(dict.fromkeys([*(name for name, _ in self.fields), *self.choices]))

    def merge(self, other: Form) -> None:
        """Fold in a form of the same shape (the staff list has one per member)."""
        for name, value in other.fields:
            if name not in self.names:
                self.fields.append((name, value))
        for name, values in other.choices.items():
            known = self.choices.setdefault(name, [])
            known.extend(v for v in values if v not in known)


class _FormParser(HTMLParser):
    """The <form>s of a page: method, action, the fields a browser would send, choices."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[tuple[str, str, list[tuple[str, str]], dict[str, list[str]]]] = []
        self._fields: list[tuple[str, str]] | None = None
        self._choices: dict[str, list[str]] = {}
        self._select: list[Any] | None = None
        self._textarea: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._fields, self._choices = [], {}
            method = (a.get("method") or "get").upper()
            self.forms.append((method, a.get("action", ""), self._fields, self._choices))
            return
        if self._fields is None or not a.get("name"):
            if tag == "option" and self._select is not None:
                self._option(a)
            return
        name = a["name"]
        if tag == "input":
            kind = a.get("type", "text")
            if kind in ("checkbox", "radio"):
                value = a.get("value") or "on"
                self._choices.setdefault(name, []).append(value)
                if "checked" in a:
                    self._fields.append((name, value))
            else:
                self._fields.append((name, a.get("value", "")))
        elif tag == "button":
            self._choices.setdefault(name, []).append(a.get("value", ""))
            if name not in dict(self._fields):
                self._fields.append((name, a.get("value", "")))
        elif tag == "select":
            self._select = [name, None]
        elif tag == "textarea":
            self._textarea = [name, ""]

    def _option(self, a: dict[str, str]) -> None:
        assert self._select is not None
        name = self._select[0]
        self._choices.setdefault(name, []).append(a.get("value", ""))
        if self._select[1] is None or "selected" in a:
            self._select[1] = a.get("value", "")

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._textarea[1] += data

    def handle_endtag(self, tag: str) -> None:
        if self._fields is None:
            return
        if tag == "form":
            self._fields = None
        elif tag == "select" and self._select is not None:
            self._fields.append((self._select[0], self._select[1] or ""))
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            name, text = self._textarea
            self._fields.append((name, text.removeprefix("\n")))
            self._textarea = None


_QUERY_READS = (
    re.compile(r"request\.(?:args|values)\.get\(\s*\"(\w+)\""),
    re.compile(r"request\.args\[\"(\w+)\"\]"),
)
_FILLED_ARGS = re.compile(r"filled\(\s*request\.args,\s*\(([^)]*)\)")


def query_names(app: Flask, endpoint: str) -> list[str]:
    """The query parameters a console view reads, from its source."""
    source = inspect.getsource(app.view_functions[endpoint])
    names = [name for pattern in _QUERY_READS for name in pattern.findall(source)]
    for group in _FILLED_ARGS.findall(source):
        names.extend(re.findall(r"\"(\w+)\"", group))
    return list(dict.fromkeys(names))


def console_rules(app: Flask) -> list[Any]:
    """Every console route but its static files."""
    return [
        rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("console.") and rule.endpoint != "console.static"
    ]


# -- the world the requests are sent into ---------------------------------------------


@dataclass
class World:
    """An app on one database: a signed-in client of each role, and one of each resource."""

    app: Flask
    clients: dict[str, FlaskClient]
    csrf: dict[str, str]
    ids: dict[str, str]
    page_ids: dict[str, list[str]] = field(default_factory=dict)
    forms: list[Form] = field(default_factory=list)

    def path(self, form: Form, **override: str | bytes) -> str:
        """The form's URL with real ids, or the segments given."""
        return fill(form.rule, {**self.ids, **override})


def path_arguments(rule: str) -> list[str]:
    """The names of a URL rule's variable parts."""
    return re.findall(r"<(?:\w+:)?(\w+)>", rule)


def fill(rule: str, values: dict[str, Any]) -> str:
    """The rule's URL with each variable part replaced by its (percent-encoded) value."""
    for name in path_arguments(rule):
        rule = re.sub(rf"<(?:\w+:)?{name}>", lambda _, v=values[name]: quote(v), rule)
    return rule


def quote(value: str | bytes) -> str:
    """Percent-encoded bytes of `value`; a lone surrogate becomes invalid UTF-8, as on the wire."""
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return urllib.parse.quote(raw, safe="")


def encode(pairs: list[tuple[str | bytes, str | bytes]]) -> str:
    """An application/x-www-form-urlencoded body (or query) of these pairs, repeats kept."""
    return "&".join(f"{quote(name)}={quote(value)}" for name, value in pairs)


def _campaign(client: FlaskClient, headers: dict[str, str], send: bool, **overrides: Any) -> str:
    response = client.post("/v1/campaigns", json=campaign_body(**overrides), headers=headers)
    assert response.status_code == 201, response.get_json()
    campaign_id: str = response.get_json()["id"]
    if send:
        sent = client.post(f"/v1/campaigns/{campaign_id}/send", headers=headers)
        assert sent.status_code == 202, sent.get_json()
    return campaign_id


def _discover(world: World) -> list[Form]:
    """Every form of every console page, and every page's query parameters."""
    app, admin = world.app, world.clients["admin"]
    adapter = app.url_map.bind("localhost")
    found: dict[tuple[str, str, tuple[str, ...]], Form] = {}

    def add(form: Form) -> None:
        key = (form.method, form.endpoint, tuple(sorted(form.names)))
        if key in found:
            found[key].merge(form)
        else:
            found[key] = form

    for rule in console_rules(app):
        if "GET" not in rule.methods:
            continue
        page = Form("GET", rule.endpoint, rule.rule)
        page.fields = [(name, "") for name in query_names(app, rule.endpoint)]
        client = admin if rule.arguments != {"secret"} else world.clients[ANONYMOUS]
        # Each page with each of its ids: a disabled device shows other forms than one in use.
        names = path_arguments(rule.rule)
        parser = _FormParser()
        statuses = set()
        for values in itertools.product(*(world.page_ids.get(n, [world.ids[n]]) for n in names)):
            response = client.get(
                fill(rule.rule, {**world.ids, **dict(zip(names, values, strict=True))})
            )
            statuses.add(response.status_code)
            parser.feed(response.get_data(as_text=True))
        # (A campaign being sent has no editor: 409.)
        assert statuses & {200, 303}, (rule.rule, statuses)
        for method, action, fields, choices in parser.forms:
            url = urllib.parse.urlsplit(action)
            endpoint, _ = adapter.match(urllib.parse.unquote(url.path), method=method)
            target = next(r for r in console_rules(app) if r.endpoint == endpoint)
            sent = [(name, value) for name, value in fields if name != "csrf_token"]
            form = Form(method, endpoint, target.rule, sent, choices)
            if method == "GET" and endpoint == rule.endpoint:
                page.merge(form)
            else:
                add(form)
        add(page)
    return list(found.values())


@pytest.fixture(scope="module")
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """The console under fuzzing, on the suite's database (SQLite, or DATABASE_URL's).

    One per module: signing in four people takes seconds. Each test checks its requests
    against the data as it finds it, so what an earlier test changed does not matter.
    """
    if os.environ.get("DATABASE_URL", "").startswith("postgresql"):
        url = request.getfixturevalue("database_url")
    else:  # a file of its own: the module keeps its data between tests
        url = f"sqlite:///{tmp_path_factory.mktemp('console-hostile') / 'db.sqlite3'}"
    app = make_app(url, RATELIMIT_ENABLED=False)
    migrate_once(app)
    with app.app_context():
        marketing = bearer(key_service.create(db.session, "marketing", "hostile marketing")[1])
        key = key_service.create(db.session, "app", "hostile app")[0]
        registered = device_service.register(
            db.session, device_body(account_id="acct-hostile", push_token="tok-hostile"), None
        )
        spare = device_service.register(
            db.session, device_body(account_id="acct-spare", push_token="tok-spare"), None
        )
        disabled_id = device_service.register(db.session, device_body(), None).device.id
        support_service.disable(db.session, disabled_id, reason="lost", ticket=None, caller=CLI)
        # Staff changes in the fuzz go to this member, never to one signed in.
        _, secret = staff_service.create(
            db.session, "victim@example.com", "support", link_ttl=timedelta(hours=1)
        )
        ids = {
            "key_id": key.id,
            "secret": secret,
            "device_id": registered.device.id,
            "spare_device_id": spare.device.id,
            "installation_id": registered.device.installation_id,
        }
    clients: dict[str, FlaskClient] = {}
    for role in ROLES:
        clients[role] = app.test_client()
        sign_in(clients[role], enrol(app, f"{role}@example.com", role))
    clients[ANONYMOUS] = app.test_client()
    csrf = {
        role: csrf_of(client.get("/console/sign-in").get_data(as_text=True))
        for role, client in clients.items()
    }
    api = app.test_client()
    ids["campaign_id"] = _campaign(api, marketing, send=False)
    ids["scheduled_id"] = _campaign(api, marketing, send=True, send_at="2031-05-01T10:00:00Z")
    ids["queued_id"] = _campaign(api, marketing, send=True)
    page_ids = {
        "device_id": [ids["device_id"], disabled_id],
        "campaign_id": [ids[name] for name in ("campaign_id", "scheduled_id", "queued_id")],
    }
    built = World(app, clients, csrf, ids, page_ids)
    built.forms = _discover(built)
    yield built
    wipe(app)


def good_values(world: World) -> dict[str, tuple[str, ...]]:
    """Values each field accepts, so that a hostile value in one field reaches the service."""
    ids = world.ids
    return {
        "email": ("victim@example.com", "new@example.com"),
        "installation_id": (ids["installation_id"],),
        "account_id": ("acct-spare", "acct-hostile"),
        "id": (ids["spare_device_id"], "acct-spare"),
        "confirm": (ids["spare_device_id"], "acct-spare", PASSWORD),
        "terminate_confirm": ("acct-spare",),
        "reason": ("lost phone",),
        "ticket": ("T-1",),
        "name": ("Spring sale",),
        "title": ("20% off",),
        "body": ("Only this week.",),
        "key": ("fuzz_category", "promotions"),
        "android_channel_id": ("fuzz",),
        "device_ids": (ids["device_id"],),
        "ttl_seconds": ("3600",),
        "badge": ("1",),
        "send_at": ("2031-05-01T10:00",),
        "local_time": ("09:30",),
        "fallback_timezone": ("Asia/Jakarta",),
        "data": ("screen=offers",),
        "content": ("fr | Soldes | Cette semaine.",),
        "default_locale": ("en",),
        "app_versions": ("5.2.0",),
        "locales": ("id-ID",),
        "account_ids": ("acct-hostile",),
        "min_os_version": ("14",),
        "last_seen_within_days": ("30",),
        "link": ("app://offers",),
        "image_url": ("https://example.com/a.png",),
        "sound": ("default",),
        "collapse_key": ("sale",),
        "password": (PASSWORD,),
        "code": ("123456",),
        "action": ("create", "save", "campaign.created"),
        "actor": ("cli",),
        "target": (ids["device_id"],),
        "explain": (ids["device_id"],),
        "done": ("disabled",),
        "next": ("/console/devices",),
        "ended": ("1",),
        "cursor": (encode_cursor(1),),
    }


def baseline(world: World, form: Form, name: str) -> list[str]:
    """What a person would put in the field: a good value that is one of its choices."""
    choices = form.choices.get(name, [])
    good = [v for v in good_values(world).get(name, ()) if not choices or v in choices]
    return good or choices or [value for key, value in form.fields if key == name][:1] or [""]


# Sending or cancelling the draft would leave nothing to edit for the requests after;
# these go to the campaign that is queued already (sending it again is a refusal).
_PATH_OVERRIDES = {
    "console.send_campaign": {"campaign_id": "queued_id"},
    "console.cancel_campaign": {"campaign_id": "queued_id"},
}


def real_path_ids(world: World, form: Form) -> dict[str, str]:
    """The ids a form's path is filled with (see _PATH_OVERRIDES)."""
    chosen = _PATH_OVERRIDES.get(form.endpoint, {})
    return {name: world.ids[source] for name, source in chosen.items()}


# -- what every answer must be ----------------------------------------------------------


def snapshot(app: Flask) -> dict[str, list[str]]:
    """Every stored row of every table (but the session's last use), comparable."""
    state: dict[str, list[str]] = {}
    with app.app_context():
        for table in db.metadata.sorted_tables:
            columns = [c for c in table.c if (table.name, c.name) not in _VOLATILE]
            state[table.name] = sorted(
                repr(tuple(row)) for row in db.session.execute(sa.select(*columns))
            )
        db.session.rollback()
    return state


_ERROR_PAGE = re.compile(r"<h1>([^<]+)</h1>\s*<p class=\"status\">Error (\d+)</p>\s*<p>([^<]+)</p>")
_ALERT = re.compile(r"<div class=\"alert\" role=\"alert\">(.*?)</div>", re.S)


def assert_console_refusal(response: Any, *statuses: int) -> str:
    """A 4xx (one of `statuses` if given): a console page with a message a person can act on."""
    assert response.status_code < 500, (response.status_code, response.get_data()[:2000])
    assert response.status_code >= 400, response.status_code
    if statuses:
        assert response.status_code in statuses, (response.status_code, response.get_data()[:800])
    assert response.mimetype == "text/html", response.mimetype
    text: str = response.get_data(as_text=True)
    assert "Traceback" not in text and '<main id="main"' in text
    page = _ERROR_PAGE.search(text)
    if page is not None:
        title, code, message = page.groups()
        assert int(code) == response.status_code
        assert title.strip() and message.strip(), page.group(0)
        return text
    # The form again, its errors above it, each linked to its field.
    alert = _ALERT.search(text)
    assert alert is not None, text[:3000]
    assert re.sub(r"<[^>]+>", "", alert.group(1)).strip()
    return text


@dataclass
class Probe:
    """Sends requests into the world and checks each answer against the stored data."""

    world: World
    state: dict[str, list[str]] = field(default_factory=dict)
    sent: int = 0

    def __post_init__(self) -> None:
        self.state = snapshot(self.world.app)

    def send(
        self,
        role: str,
        method: str,
        path: str,
        pairs: list[tuple[str | bytes, str | bytes]],
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One request; a refusal must be a console page and must have changed nothing."""
        client = self.world.clients[role]
        if method == "GET":
            query = encode(pairs)
            response = client.get(path + (f"?{query}" if query else ""), headers=headers)
        else:
            response = client.post(
                path,
                data=encode(pairs),
                content_type="application/x-www-form-urlencoded",
                headers=headers,
            )
        self.sent += 1
        after = snapshot(self.world.app)
        context = (role, method, path, [(n, v[:80]) for n, v in pairs])
        assert response.status_code < 500, (context, response.get_data()[:3000])
        if response.status_code >= 400:
            assert_console_refusal(response)
            assert after == self.state, ("a refused request changed stored data", context)
        self.state = after
        return response


def _form(world: World, endpoint: str) -> Form:
    return next(f for f in world.forms if f.endpoint == endpoint and f.method == "POST")


def _filled(world: World, form: Form, **values: str) -> list[tuple[str | bytes, str | bytes]]:
    """The form as a person fills it in, with these values instead, and the page's token."""
    pairs: list[tuple[str | bytes, str | bytes]] = [("csrf_token", world.csrf["admin"])]
    return pairs + [(n, values.get(n, baseline(world, form, n)[0])) for n in form.names]


# -- the 500s the fuzz found, by name ------------------------------------------------------


def test_a_number_of_thousands_of_digits_or_not_ascii_digits_is_a_field_error(
    world: World,
) -> None:
    # str.isdigit() let "²" and 5000 nines through to int(), which raised.
    probe = Probe(world)
    compose = _form(world, "console.compose")
    for values, message in [
        ({"ttl_seconds": "9" * 5000}, "Too large a number."),
        ({"badge": "²"}, "A whole number."),
        ({"last_seen_within_days": "١٢"}, "A whole number."),
    ]:
        response = probe.send(
            "admin", "POST", "/console/campaigns/new", _filled(world, compose, **values)
        )
        text = assert_console_refusal(response, 422)
        (name,) = values
        assert f'<p class="error" id="f-{name}-error">{message}</p>' in text


def test_nul_characters_are_refused_before_they_reach_the_database(world: World) -> None:
    # PostgreSQL refuses NUL in text: a key's name, a privacy id or a sign-in email was a 500.
    probe = Probe(world)
    for endpoint, values in [
        ("console.key_create", {"name": "a\x00b"}),
        ("console.privacy_export", {"id": "a\x00b"}),
        ("console.privacy_terminate", {"account_id": "a\x00b", "terminate_confirm": "a\x00b"}),
        ("console.staff_create", {"email": "a\x00b@example.com"}),
        ("console.sign_in", {"email": "a\x00b@example.com"}),
    ]:
        form = _form(world, endpoint)
        response = probe.send("admin", "POST", world.path(form), _filled(world, form, **values))
        text = assert_console_refusal(response, 422)
        assert "NUL character" in text and "nothing was changed" in text
    response = probe.send(
        "admin", "GET", "/console/campaigns/" + world.ids["campaign_id"], [("explain", "a\x00b")]
    )
    assert_console_refusal(response, 422)
    revoke = _form(world, "console.key_revoke")
    response = probe.send(
        "admin", "POST", world.path(revoke, key_id="a\x00b"), _filled(world, revoke)
    )
    assert "no console page at this address" in assert_console_refusal(response, 404)


def test_an_origin_or_referer_that_does_not_parse_is_refused_not_an_error(world: World) -> None:
    # urlsplit() raises on an IPv6 host whose bracket is left open.
    probe = Probe(world)
    keys = _form(world, "console.key_create")
    for header in ("Origin", "Referer"):
        response = probe.send(
            "admin", "POST", "/console/admin/keys", _filled(world, keys), {header: "http://["}
        )
        assert "This form did not come from here." in assert_console_refusal(response, 403)
    # A Referer that does not parse is no link back from the "Form expired" page.
    response = probe.send(
        "admin",
        "POST",
        "/console/admin/keys",
        [("name", "x")],
        {"Origin": "http://localhost", "Referer": "http://[::1/console/"},
    )
    text = assert_console_refusal(response, 403)
    assert "Form expired" in text and "Back to the form" not in text


def test_an_image_url_that_does_not_parse_is_a_field_error(world: World) -> None:
    probe = Probe(world)
    compose = _form(world, "console.compose")
    pairs = _filled(world, compose, image_url="https://[")
    text = assert_console_refusal(probe.send("admin", "POST", "/console/campaigns/new", pairs), 422)
    assert '<p class="error" id="f-image_url-error">An https:// URL.</p>' in text


# -- discovery covers every route -------------------------------------------------------


def test_every_console_form_and_query_is_discovered(world: World) -> None:
    posts = {r.endpoint for r in console_rules(world.app) if "POST" in r.methods}
    with_form = {f.endpoint for f in world.forms if f.method == "POST"}
    assert posts == with_form, posts ^ with_form
    by_page = {f.endpoint: f.names for f in world.forms if f.method == "GET"}
    assert {"installation_id", "account_id", "platform", "cursor"} <= set(
        by_page["console.devices"]
    )
    assert {"status", "cursor", "explain", "done"} <= set(by_page["console.campaign"])
    compose = next(f for f in world.forms if f.endpoint == "console.compose" and f.method == "POST")
    assert {"send_at", "ttl_seconds", "platforms", "data", "content", "action"} <= set(
        compose.names
    )


# -- each field of each form, one hostile value at a time --------------------------------

# One value of each kind; the generated test below mixes them with everything else.
SWEEP: tuple[str | bytes, ...] = (
    "a\x00b",
    b"\xed\xa0\x80",  # an unpaired surrogate, as UTF-8 would carry it
    "x" * 100_000,
    "9" * 5000,
    "²",
    "2025-02-30T10:00",
    "superuser",
    "https://[",  # a URL that does not parse
)


def _pairs(
    world: World, form: Form, name: str | None = None, value: str | bytes = ""
) -> list[tuple[str | bytes, str | bytes]]:
    pairs: list[tuple[str | bytes, str | bytes]] = []
    for each in form.names:
        pairs.append((each, value if each == name else baseline(world, form, each)[0]))
    return pairs


def _role_for(form: Form) -> str:
    return ANONYMOUS if form.endpoint in ("console.enrol",) else "admin"


def test_each_field_refuses_each_kind_of_hostile_value(world: World) -> None:
    probe = Probe(world)
    for form in world.forms:
        if form.endpoint == "console.sign_out":
            continue  # signed out, the rest would test the sign-in redirect
        role = _role_for(form)
        path = world.path(form, **real_path_ids(world, form))
        token = [] if form.method == "GET" else [("csrf_token", world.csrf[role])]
        for name in form.names:
            for value in SWEEP:
                probe.send(role, form.method, path, token + _pairs(world, form, name, value))


def test_missing_wrong_and_repeated_csrf_tokens_change_nothing(world: World) -> None:
    probe = Probe(world)
    for form in world.forms:
        if form.method != "POST":
            continue
        role = _role_for(form)
        path = world.path(form, **real_path_ids(world, form))
        valid = world.csrf[role]
        for token in (
            [],
            [("csrf_token", "")],
            [("csrf_token", "0" * 64)],
            [("csrf_token", valid + "\x00")],
            [("csrf_token", b"\xff" + valid.encode())],
            [("csrf_token", "0" * 64), ("csrf_token", valid)],
        ):
            response = probe.send(role, "POST", path, token + _pairs(world, form))
            text = assert_console_refusal(response, 403)
            assert "nothing was changed" in text


def test_path_segments_that_are_not_ids_are_not_found(world: World) -> None:
    probe = Probe(world)
    segments: tuple[str | bytes, ...] = (
        "a\x00b",
        b"\xed\xa0\x80",
        "x" * 5000,
        "-1",
        "0",
        "..",
        "%00",
        "<img src=x onerror=alert(1)>",
    )
    for form in world.forms:
        names = path_arguments(form.rule)
        if not names:
            continue
        role = _role_for(form)
        token = [] if form.method == "GET" else [("csrf_token", world.csrf[role])]
        for segment in segments:
            path = world.path(form, **dict.fromkeys(names, segment))
            response = probe.send(role, form.method, path, token + _pairs(world, form))
            expected = (404, 410) if form.endpoint == "console.enrol" else (404,)
            assert_console_refusal(response, *expected)


# -- generated requests, every role ---------------------------------------------------------

_HOSTILE: tuple[str | bytes, ...] = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    b"\xed\xa0\x80",
    b"\xff\xfe",
    "x" * 100_000,
    "-1",
    "-0",
    "0",
    "1.5",
    "1e999",
    "NaN",
    "0x1F",
    "²",
    "١٢",
    "9" * 5000,
    str(2**63),
    str(-(2**63) - 1),
    "2025-02-30T10:00",
    "2025-13-01T00:00",
    "0000-01-01T00:00",
    "0001-01-01T00:00",
    "9999-12-31T23:59",
    "2025-01-01T10:00+05:00",
    "2025-01-01",
    "24:00",
    "99:99",
    "superuser",
    "ADMIN",
    "admin ",
    "windows",
    "transactional",
    "service",
    "sent",
    "Europe/Nowhere",
    "../../etc/passwd",
    "<img src=x onerror=alert(1)>",
    "\u202e",
    "x\r\nSet-Cookie: a=b",
    "=\n=",
    " | | ",
    "a|b|c|d",
    "%00",
    "//evil.example/",
    "https://evil.example/console/",
    "https://[",
    "http://[::1/console/devices",
)
hostile_values = st.one_of(st.sampled_from(_HOSTILE), st.text(max_size=30), st.binary(max_size=30))


@st.composite
def hostile_requests(draw: Any, world: World, role: str) -> dict[str, Any]:
    """One request to any console form or page: real or hostile ids, fields and token."""
    form: Form = draw(st.sampled_from(world.forms))
    ids = real_path_ids(world, form)
    for name in path_arguments(form.rule):
        if draw(st.integers(0, 4)) == 0:
            ids[name] = draw(hostile_values.filter(bool))
    pairs: list[tuple[str | bytes, str | bytes]] = []
    if form.method == "POST":
        valid = world.csrf[role]
        # A valid token signs the fuzzing client out of sign-out; the others stay.
        tokens = [[("csrf_token", valid)]] * 6 if form.endpoint != "console.sign_out" else []
        tokens += [
            [],
            [("csrf_token", "0" * 64)],
            [("csrf_token", "0" * 64), ("csrf_token", valid)],
        ]
        pairs += draw(st.sampled_from(tokens))
    for name in form.names:
        good = draw(st.sampled_from(baseline(world, form, name)))
        how = draw(st.sampled_from(["good", "good", "drop", "hostile", "hostile", "repeat"]))
        if how == "good":
            pairs.append((name, good))
        elif how == "hostile":
            pairs.append((name, draw(hostile_values)))
        elif how == "repeat":
            pairs += [(name, draw(hostile_values)), (name, good)]
    if draw(st.integers(0, 5)) == 0:
        pairs.append((draw(hostile_values), draw(hostile_values)))
    pairs = draw(st.permutations(pairs)) if draw(st.integers(0, 5)) == 0 else pairs
    headers = {}
    if draw(st.integers(0, 5)) == 0:
        header = draw(st.sampled_from(["Origin", "Referer"]))
        headers[header] = draw(
            st.sampled_from(_HOSTILE).filter(lambda v: isinstance(v, str) and v.isprintable())
        )
    return {
        "method": form.method,
        "path": world.path(form, **ids),
        "pairs": pairs,
        "headers": headers,
    }


@pytest.mark.parametrize("role", [*ROLES, ANONYMOUS])
def test_generated_hostile_requests_are_never_server_errors(world: World, role: str) -> None:
    probe = Probe(world)

    @given(request=hostile_requests(world, role))
    @settings(
        max_examples=50,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(request: dict[str, Any]) -> None:
        probe.send(role, request["method"], request["path"], request["pairs"], request["headers"])

    run()
    # The client is still signed in: the fuzz reached the pages, not the sign-in redirect.
    if role != ANONYMOUS:
        assert world.clients[role].get("/console/").status_code == 303
        assert "sign-in" not in world.clients[role].get("/console/").location
