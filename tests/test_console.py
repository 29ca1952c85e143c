"""The staff console through the test client: accounts, sign-in, sessions, and each role's pages."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.datastructures import MultiDict

from mobile_api.extensions import db
from mobile_api.services import totp_secrets
from models import AuditEvent, Campaign, Device, StaffLink, StaffMember, StaffSession, utcnow
from tests.campaign_fixtures import (  # noqa: F401 - fixtures
    app,
    device,
    drain,
    fcm,
    fcm_settings,
)
from tests.console_fixtures import (  # noqa: F401 - fixtures
    PASSWORD,
    Person,
    csrf_of,
    enrol,
    person,
    post_form,
    sign_in,
    staff_client,
)
from tests.fakes.fcm_server import FakeFcmServer
from tests.notification_fixtures import (  # noqa: F401 - fixtures
    notification_body,
    notify,
    post_notification,
    ticket_reply,
)

Clients = Callable[[str], FlaskClient]

XSS = "<img src=x onerror=alert(1)>"


def _text(response: Any) -> str:
    return str(response.get_data(as_text=True))


def _trail(app: Flask, **where: str) -> list[Any]:  # noqa: F811
    """Audit events (plain rows), oldest first, matching the given column values."""
    with app.app_context():
        table = AuditEvent.__table__
        stmt = sa.select(table).order_by(table.c.id)
        for name, value in where.items():
            stmt = stmt.where(table.c[name] == value)
        events = list(db.session.execute(stmt))
        db.session.commit()
    return events


# --- accounts on the command line -------------------------------------------------------


def test_cli_creates_lists_reroles_disables_enables_and_resets_staff(app: Flask) -> None:  # noqa: F811
    runner = app.test_cli_runner()
    created = runner.invoke(
        args=["staff", "create", "--email", "Ana@Example.com", "--role", "support"]
    )
    assert created.exit_code == 0, created.output
    link = created.output.strip().splitlines()[-1]
    assert re.fullmatch(r"http://127\.0\.0\.1:8000/console/enrol/sl_[\w-]{43}", link)

    assert runner.invoke(args=["staff", "list"]).output.split("\t")[:3] == [
        "ana@example.com",
        "support",
        "not enrolled",
    ]
    again = runner.invoke(args=["staff", "create", "--email", "ana@example.com", "--role", "admin"])
    assert again.exit_code != 0 and "already exists" in again.output
    assert runner.invoke(args=["staff", "set-role", "ana@example.com", "privacy"]).exit_code == 0
    assert runner.invoke(args=["staff", "disable", "ana@example.com"]).exit_code == 0
    assert "disabled" in runner.invoke(args=["staff", "list"]).output
    assert runner.invoke(args=["staff", "enable", "ana@example.com"]).exit_code == 0
    reset = runner.invoke(args=["staff", "reset", "ana@example.com"])
    assert reset.exit_code == 0, reset.output
    new_link = reset.output.strip().splitlines()[-1]
    assert new_link != link
    unknown = runner.invoke(args=["staff", "disable", "nobody@example.com"])
    assert unknown.exit_code != 0 and "No staff member" in unknown.output

    client = app.test_client()
    # The reset replaced the first link; the new one works.
    assert client.get(link.removeprefix("http://127.0.0.1:8000")).status_code == 410
    assert client.get(new_link.removeprefix("http://127.0.0.1:8000")).status_code == 200
    actions = [e.action for e in _trail(app, actor="cli") if e.action.startswith("staff.")]
    assert actions == [
        "staff.created",
        "staff.role_changed",
        "staff.disabled",
        "staff.enabled",
        "staff.reset",
    ]


# --- enrolment and sign-in ---------------------------------------------------------------


def _link_path(on: Flask, email: str, role: str) -> str:
    result = on.test_cli_runner().invoke(args=["staff", "create", "--email", email, "--role", role])
    return result.output.strip().splitlines()[-1].removeprefix("http://127.0.0.1:8000")


def test_a_one_time_link_enrols_password_and_totp_once(app: Flask) -> None:  # noqa: F811
    import pyotp

    client = app.test_client()
    path = _link_path(app, "bea@example.com", "marketing")
    page = _text(client.get(path))
    secret = re.search(r'id="totp-secret">([A-Z2-7]{32})<', page)
    assert secret, page
    assert "otpauth://totp/" in page
    # The same secret as a QR code: inline SVG, named for screen readers, no script or style.
    qr_code = re.search(
        r'<figure class="qr">\s*(<svg role="img" aria-label="QR code[^"]+".*?</svg>)', page, re.S
    )
    assert qr_code, page
    assert "<path" in qr_code.group(1) and "style=" not in page and "<script" not in page
    totp = pyotp.TOTP(secret.group(1))
    token = csrf_of(page)

    short = client.post(
        path,
        data={"csrf_token": token, "password": "short", "confirm": "short", "code": totp.now()},
    )
    assert short.status_code == 422 and "12 to 256 characters" in _text(short)
    wrong = client.post(
        path,
        data={"csrf_token": token, "password": PASSWORD, "confirm": PASSWORD, "code": "000000"},
    )
    assert wrong.status_code == 422 and "not the authenticator" in _text(wrong)
    assert '<svg role="img" aria-label="QR code' in _text(wrong)  # still there to scan
    done = client.post(
        path,
        data={"csrf_token": token, "password": PASSWORD, "confirm": PASSWORD, "code": totp.now()},
    )
    assert done.status_code == 200 and "You are set up" in _text(done)
    # Single use.
    assert client.get(path).status_code == 410
    reused = client.post(
        path,
        data={"csrf_token": token, "password": PASSWORD, "confirm": PASSWORD, "code": totp.now()},
    )
    assert reused.status_code == 410 and "ask an administrator" in _text(reused)
    with app.app_context():
        member = db.session.scalars(sa.select(StaffMember)).one()
        assert member.password_hash and member.password_hash.startswith("$argon2id$")
        # A dump of the database does not give the authenticator away.
        stored = [*db.session.scalars(sa.select(StaffLink.totp_secret)).all(), member.totp_secret]
        assert stored and all(value and secret.group(1) not in value for value in stored)
        cipher = totp_secrets.fernet(app.config)
        assert totp_secrets.unseal(cipher, str(member.totp_secret)) == secret.group(1)
        db.session.commit()


def test_totp_secrets_are_sealed_with_the_configured_key_else_one_from_secret_key() -> None:
    from cryptography.fernet import Fernet

    configured = Fernet.generate_key().decode()
    sealed = totp_secrets.seal(
        totp_secrets.fernet({"CONSOLE_TOTP_KEY": configured, "SECRET_KEY": "k"}), "ABC"
    )
    assert totp_secrets.unseal(Fernet(configured), sealed) == "ABC"
    derived = totp_secrets.seal(totp_secrets.fernet({"SECRET_KEY": "k"}), "ABC")
    assert totp_secrets.unseal(totp_secrets.fernet({"SECRET_KEY": "k"}), derived) == "ABC"
    with pytest.raises(ValueError, match="another key"):
        totp_secrets.unseal(totp_secrets.fernet({"SECRET_KEY": "other"}), derived)


def test_an_expired_link_is_refused(app: Flask) -> None:  # noqa: F811
    from models import StaffLink

    path = _link_path(app, "cy@example.com", "support")
    with app.app_context():
        db.session.execute(sa.update(StaffLink).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    assert app.test_client().get(path).status_code == 410


def test_sign_in_needs_password_and_current_code_once(
    app: Flask,  # noqa: F811
    person: Callable[[str], Person],  # noqa: F811
) -> None:
    someone = person("support")
    client = app.test_client()
    token = csrf_of(_text(client.get("/console/sign-in")))

    def attempt(password: str, code: str) -> Any:
        return client.post(
            "/console/sign-in",
            data={"csrf_token": token, "email": someone.email, "password": password, "code": code},
        )

    assert attempt("wrong password!", someone.code()).status_code == 401
    refused = attempt(PASSWORD, "123456")
    assert refused.status_code == 401
    assert "do not sign anybody in" in _text(refused)
    signed = attempt(PASSWORD, someone.code())
    assert signed.status_code == 303 and signed.headers["Location"] == "/console/devices"
    # The same code a second time (an overheard one) signs nobody in.
    client = app.test_client()
    token = csrf_of(_text(client.get("/console/sign-in")))
    assert attempt(PASSWORD, someone.code()).status_code == 401
    assert [e.actor for e in _trail(app, action="staff.signed_in")] == [f"staff:{someone.email}"]


def test_failed_sign_ins_are_rate_limited_with_a_clear_message(
    app_factory: Callable[..., Flask],
) -> None:
    limited = app_factory(RATELIMIT_ENABLED=True, CONSOLE_SIGN_IN_LIMIT_EMAIL="3 per 15 minutes")
    someone = enrol(limited, "dee@example.com", "privacy")
    client = limited.test_client()
    token = csrf_of(_text(client.get("/console/sign-in")))
    form = {"csrf_token": token, "email": someone.email, "password": "nope nope nope"}
    for _ in range(3):
        assert client.post("/console/sign-in", data={**form, "code": "111111"}).status_code == 401
    # Even the right password and code wait now.
    blocked = client.post(
        "/console/sign-in", data={**form, "password": PASSWORD, "code": someone.code()}
    )
    assert blocked.status_code == 429
    assert "Too many failed sign-in attempts" in _text(blocked)
    assert "try again in 15 minutes" in _text(blocked)
    assert 0 < int(blocked.headers["Retry-After"]) <= 900


def test_after_a_totp_key_change_sign_in_is_refused_like_any_other_and_reset_mends_it(
    app_factory: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    from cryptography.fernet import Fernet

    limited = app_factory(RATELIMIT_ENABLED=True, CONSOLE_SIGN_IN_LIMIT_EMAIL="1 per 15 minutes")
    someone = enrol(limited, "eve@example.com", "support")
    pending = _link_path(limited, "fay@example.com", "privacy")
    limited.config["CONSOLE_TOTP_KEY"] = Fernet.generate_key().decode()  # the operator's change
    client = limited.test_client()
    token = csrf_of(_text(client.get("/console/sign-in")))
    form = {"csrf_token": token, "email": someone.email, "password": PASSWORD}
    # Watched on its own logger: the migrations that app_factory ran in this test
    # (Alembic's fileConfig) replaced the root handlers pytest watches.
    staff_log = logging.getLogger("mobile_api.services.staff")
    staff_log.addHandler(caplog.handler)
    try:
        refused = client.post("/console/sign-in", data={**form, "code": someone.code()})
    finally:
        staff_log.removeHandler(caplog.handler)
    # The same answer as a wrong password: the right one is not confirmed without a code.
    assert refused.status_code == 401 and "do not sign anybody in" in _text(refused)
    assert "sealed with another key" in caplog.text and "flask staff reset" in caplog.text
    # It counts as a failed attempt.
    assert client.post("/console/sign-in", data={**form, "code": someone.code()}).status_code == 429
    # A link issued under the old key is used up, not a 500.
    assert client.get(pending).status_code == 410
    # Reset issues a link under the new key, and the person enrols again.
    reset = limited.test_cli_runner().invoke(args=["staff", "reset", someone.email])
    path = reset.output.strip().splitlines()[-1].removeprefix("http://127.0.0.1:8000")
    page = _text(client.get(path))
    assert re.search(r'id="totp-secret">([A-Z2-7]{32})<', page), page


def test_a_malformed_totp_key_stops_the_app_at_start(
    app_factory: Callable[..., Flask],
) -> None:
    with pytest.raises(RuntimeError, match="CONSOLE_TOTP_KEY must be a Fernet key"):
        app_factory(CONSOLE_TOTP_KEY="not-a-fernet-key")


# --- sessions, cookies, CSRF, headers ------------------------------------------------------


def test_session_cookie_is_httponly_strict_and_secure_over_https(
    app: Flask,  # noqa: F811
    person: Callable[[str], Person],  # noqa: F811
) -> None:
    someone = person("support")
    client = app.test_client()
    base = "https://localhost"
    token = csrf_of(_text(client.get("/console/sign-in", base_url=base)))
    response = client.post(
        "/console/sign-in",
        base_url=base,
        data={
            "csrf_token": token,
            "email": someone.email,
            "password": PASSWORD,
            "code": someone.code(),
        },
    )
    assert response.status_code == 303
    cookie = next(
        c for c in response.headers.getlist("Set-Cookie") if c.startswith("__Host-console=")
    )
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Path=/" in cookie and "Domain" not in cookie
    assert client.get("/console/devices", base_url=base).status_code == 200


def test_pages_carry_a_strict_csp_and_no_inline_script(staff_client: Clients) -> None:  # noqa: F811
    client = staff_client("admin")
    for page in ("/console/sign-in", "/console/devices", "/console/admin/staff"):
        response = client.get(page)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "style-src 'self'" in csp
        assert "unsafe-inline" not in csp and "script-src" not in csp
        assert response.headers["Cache-Control"] == "no-store"
        html = _text(response)
        assert "<script" not in html and "style=" not in html
    css = client.get("/console/static/console.css")
    assert css.status_code == 200 and css.mimetype == "text/css"


def test_idle_and_disabled_sessions_end(
    app: Flask,  # noqa: F811
    person: Callable[[str], Person],  # noqa: F811
) -> None:
    idle, disabled = person("support"), person("support")
    idle_client, disabled_client = app.test_client(), app.test_client()
    sign_in(idle_client, idle)
    sign_in(disabled_client, disabled)
    with app.app_context():
        db.session.execute(
            sa.update(StaffSession)
            .where(StaffSession.staff_id == _id(idle.email))
            .values(last_seen_at=utcnow() - timedelta(minutes=31))
        )
        db.session.commit()
    gone = idle_client.get("/console/devices")
    assert gone.status_code == 303 and gone.headers["Location"].startswith("/console/sign-in")

    assert disabled_client.get("/console/devices").status_code == 200
    app.test_cli_runner().invoke(args=["staff", "disable", disabled.email])
    assert disabled_client.get("/console/devices").status_code == 303
    # And they cannot sign in again.
    assert disabled_client.get("/console/sign-in").status_code == 200
    token = csrf_of(_text(disabled_client.get("/console/sign-in")))
    again = disabled_client.post(
        "/console/sign-in",
        data={
            "csrf_token": token,
            "email": disabled.email,
            "password": PASSWORD,
            "code": disabled.code(1),
        },
    )
    assert again.status_code == 401


def _id(email: str) -> str:
    return db.session.scalars(sa.select(StaffMember.id).where(StaffMember.email == email)).one()


def test_sign_out_ends_the_session(staff_client: Clients) -> None:  # noqa: F811
    client = staff_client("marketing")
    assert post_form(client, "/console/campaigns", "/console/sign-out", {}).status_code == 303
    assert client.get("/console/campaigns").status_code == 303


def test_posts_without_the_csrf_token_or_from_another_origin_are_refused(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
    register: Callable[..., tuple[dict[str, Any], str]],
) -> None:
    made, _ = register()
    client = staff_client("support")
    action = f"/console/devices/{made['id']}/disable"
    token = csrf_of(_text(client.get(f"/console/devices/{made['id']}")))
    missing = client.post(action, data={"reason": "x"})
    assert missing.status_code == 403 and "Form expired" in _text(missing)
    assert missing.mimetype == "text/html"
    other = client.post(
        action,
        data={"csrf_token": token, "reason": "x"},
        headers={"Origin": "https://evil.example"},
    )
    assert other.status_code == 403 and "Cross-site request refused" in _text(other)
    with app.app_context():
        assert db.session.get(Device, made["id"]).disabled_at is None  # type: ignore[union-attr]
        db.session.commit()


ROLE_PAGES = {
    "support": ["/console/devices", "/console/audit"],
    "privacy": ["/console/privacy", "/console/audit"],
    "marketing": ["/console/campaigns", "/console/campaigns/new", "/console/insights"],
    "admin": ["/console/admin/staff", "/console/admin/keys"],
}


@pytest.mark.parametrize("role", ["support", "privacy", "marketing"])
def test_each_role_is_refused_the_other_roles_pages(staff_client: Clients, role: str) -> None:  # noqa: F811
    client = staff_client(role)
    for owner, pages in ROLE_PAGES.items():
        for page in pages:
            response = client.get(page)
            if owner == role or page in ROLE_PAGES[role]:
                assert response.status_code == 200, page
            else:
                assert response.status_code == 403, page
                assert response.mimetype == "text/html"
                assert "Not for your role" in _text(response)


def test_admin_may_open_every_page(staff_client: Clients) -> None:  # noqa: F811
    client = staff_client("admin")
    for pages in ROLE_PAGES.values():
        for page in pages:
            assert client.get(page).status_code == 200, page


def test_signed_out_visitors_are_sent_to_sign_in_and_back(
    app: Flask,  # noqa: F811
    person: Callable[[str], Person],  # noqa: F811
) -> None:
    client = app.test_client()
    response = client.get("/console/audit?action=x")
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/sign-in?next=/console/audit?action%3Dx"
    someone = person("privacy")
    token = csrf_of(_text(client.get(response.headers["Location"])))
    signed = client.post(
        "/console/sign-in",
        data={
            "csrf_token": token,
            "email": someone.email,
            "password": PASSWORD,
            "code": someone.code(),
            "next": "/console/audit?action=x",
        },
    )
    assert signed.headers["Location"] == "/console/audit?action=x"


# --- support ------------------------------------------------------------------------------


def test_support_finds_a_device_sees_it_safely_and_disables_it(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
) -> None:
    made = device(device_model=XSS, account_id="acct-9")
    client = staff_client("support")
    found = _text(client.get("/console/devices", query_string={"account_id": "acct-9"}))
    assert made.id in found
    assert made.push_token not in found  # masked
    assert XSS not in found and "&lt;img src=x onerror=alert(1)&gt;" in found
    by_platform = _text(client.get("/console/devices", query_string={"platform": "android"}))
    assert made.id in by_platform
    assert client.get("/console/devices", query_string={"platform": "nokia"}).status_code == 422

    page = _text(client.get(f"/console/devices/{made.id}"))
    assert made.push_token not in page and made.push_token[-4:] in page
    assert "promotional push" in page and "granted" in page  # the consent timeline
    assert XSS not in page

    blank = post_form(
        client, f"/console/devices/{made.id}", f"/console/devices/{made.id}/disable", {}
    )
    assert blank.status_code == 422
    done = post_form(
        client,
        f"/console/devices/{made.id}",
        f"/console/devices/{made.id}/disable",
        {"reason": "abuse report", "ticket": "T-77"},
    )
    assert done.status_code == 303
    disabled = _text(client.get(done.headers["Location"]))
    assert "Device disabled." in disabled and "T-77" in disabled
    enabled = post_form(
        client, f"/console/devices/{made.id}", f"/console/devices/{made.id}/enable", {}
    )
    assert enabled.status_code == 303
    events = _trail(app, action="device.disabled") + _trail(app, action="device.enabled")
    assert {e.actor for e in events} == {"staff:support0@example.com"}
    assert client.get("/console/devices/NOSUCHDEVICE").status_code == 404


def test_the_audit_page_filters_and_the_admin_checks_the_chain(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
) -> None:
    admin = staff_client("admin")
    support = staff_client("support")
    page = _text(support.get("/console/audit", query_string={"action": "staff.signed_in"}))
    assert "staff:admin0@example.com" in page and "staff:support1@example.com" in page
    filtered = _text(
        support.get("/console/audit", query_string={"actor": "staff:admin0@example.com"})
    )
    assert "staff:support1@example.com" not in filtered
    assert "Check the hash chain" not in page  # admin only
    assert post_form(support, "/console/audit", "/console/audit/verify", {}).status_code == 403
    verified = post_form(admin, "/console/audit", "/console/audit/verify", {})
    assert "The chain holds" in _text(verified)


# --- privacy ------------------------------------------------------------------------------


def test_privacy_exports_erases_with_confirmation_and_terminates(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
) -> None:
    made = device(account_id="acct-1")
    other = device(account_id="acct-2")
    client = staff_client("privacy")
    export = post_form(
        client, "/console/privacy", "/console/privacy/export", {"kind": "device", "id": made.id}
    )
    assert export.status_code == 200 and export.mimetype == "application/json"
    assert "attachment" in export.headers["Content-Disposition"]
    assert export.get_json()["device"]["id"] == made.id
    account = post_form(
        client, "/console/privacy", "/console/privacy/export", {"kind": "account", "id": "acct-1"}
    )
    assert [d["device"]["id"] for d in account.get_json()["devices"]] == [made.id]

    mistyped = post_form(
        client,
        "/console/privacy",
        "/console/privacy/erase",
        {"kind": "device", "id": made.id, "reason": "child_under_13", "confirm": made.id[:-1]},
    )
    assert mistyped.status_code == 422 and "Type the id exactly" in _text(mistyped)
    erased = post_form(
        client,
        "/console/privacy",
        "/console/privacy/erase",
        {"kind": "device", "id": made.id, "reason": "child_under_13", "confirm": made.id},
    )
    assert erased.status_code == 200 and "Erased the device" in _text(erased)
    with app.app_context():
        assert db.session.get(Device, made.id) is None
        db.session.commit()
    (event,) = _trail(app, action="device.erased")
    assert event.details == {"reason": "child_under_13"} and event.actor.startswith("staff:")

    terminated = post_form(
        client,
        "/console/privacy",
        "/console/privacy/terminate",
        {"account_id": "acct-2", "terminate_confirm": "acct-2"},
    )
    page = _text(terminated)
    expected = (utcnow() + timedelta(days=14)).strftime("%Y-%m-%d")
    assert "purged on" in page and expected in page
    assert other.id not in page  # device ids are not listed, only the account
    missing = post_form(
        client, "/console/privacy", "/console/privacy/export", {"kind": "device", "id": "NOPE"}
    )
    assert missing.status_code == 404 and missing.mimetype == "text/html"


# --- marketing ----------------------------------------------------------------------------


def _compose(client: FlaskClient, **fields: str) -> Any:
    body = {"name": "spring", "category_key": "promotions", "title": "Hi", "body": "Sale"}
    body.update(fields)
    return post_form(client, "/console/campaigns/new", "/console/campaigns/new", body)


def test_marketing_previews_creates_sends_and_follows_a_campaign(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
    fcm: FakeFcmServer,  # noqa: F811
) -> None:
    opted_in = device()
    opted_out = device(promotional=False)
    client = staff_client("marketing")

    invalid = _compose(client, name="", ttl_seconds="soon", locales="not a locale!")
    assert invalid.status_code == 422
    text = _text(invalid)
    assert "ttl seconds" in text and "A whole number." in text

    preview = _compose(client, action="preview", platforms="android")
    text = _text(preview)
    assert "Preview: 1 eligible device now" in text
    assert "promotional opt out: 1" in text

    created = _compose(client, action="create", data="screen=offers")
    assert created.status_code == 303
    campaign_page = created.headers["Location"].split("?")[0]
    campaign_id = campaign_page.rsplit("/", 1)[-1]
    assert "spring" in _text(client.get("/console/campaigns"))

    sent = post_form(client, campaign_page, f"{campaign_page}/send", {})
    assert sent.status_code == 303
    assert 'http-equiv="refresh"' in _text(client.get(campaign_page))  # follows progress
    drain(app)
    assert [m.token for m in fcm.received] == [opted_in.push_token]
    page = _text(client.get(campaign_page))
    assert "completed" in page and "promotional_opt_out 1" not in page
    assert 'aria-label="Outcomes: targeted 2, sent 1, failed 0, suppressed 1, pending 0"' in page
    explained = _text(client.get(campaign_page, query_string={"explain": opted_out.id}))
    assert "Not sent: promotional_opt_out." in explained
    again = post_form(client, campaign_page, f"{campaign_page}/send", {})
    assert again.status_code == 409 and "Campaign already sent" in _text(again)

    test = post_form(client, campaign_page, f"{campaign_page}/test", {"device_ids": opted_in.id})
    assert test.status_code == 303
    drain(app)
    assert [m.token for m in fcm.received] == [opted_in.push_token] * 2
    events = _trail(app, target=campaign_id)
    assert [e.action for e in events] == ["campaign.create", "campaign.send"]
    assert {e.actor for e in events} == {"staff:marketing0@example.com"}

    draft = _compose(client, action="create").headers["Location"].split("?")[0]
    cancelled = post_form(client, draft, f"{draft}/cancel", {})
    assert cancelled.status_code == 303 and "cancelled" in _text(client.get(draft))
    service = _compose(client, action="create", category_key="service")
    assert service.status_code == 403 and "admin" in _text(service)


def test_insights_are_charts(
    staff_client: Clients,  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
) -> None:
    for _ in range(5):
        device()
    page = _text(staff_client("marketing").get("/console/insights"))
    assert '<svg role="img" aria-label="Active devices by platform: android 5"' in page


# --- admin --------------------------------------------------------------------------------


def test_admin_manages_staff_and_keys_showing_secrets_once(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
) -> None:
    client = staff_client("admin")
    created = post_form(
        client,
        "/console/admin/staff",
        "/console/admin/staff",
        {"email": "new@example.com", "role": "support"},
    )
    link = re.search(r'id="one-time-link">([^<]+)<', _text(created))
    assert link and "/console/enrol/sl_" in link.group(1)
    listing = _text(client.get("/console/admin/staff"))
    assert "new@example.com" in listing and link.group(1) not in listing
    duplicate = post_form(
        client,
        "/console/admin/staff",
        "/console/admin/staff",
        {"email": "new@example.com", "role": "support"},
    )
    assert duplicate.status_code == 409

    for change in ({"change": "role", "role": "privacy"}, {"change": "disable"}):
        post_form(
            client,
            "/console/admin/staff",
            "/console/admin/staff/change",
            {"email": "new@example.com", **change},
        )
    with app.app_context():
        member = db.session.scalars(
            sa.select(StaffMember).where(StaffMember.email == "new@example.com")
        ).one()
        assert member.role == "privacy" and member.disabled_at is not None
        db.session.commit()

    key = post_form(
        client, "/console/admin/keys", "/console/admin/keys", {"role": "support", "name": "desk"}
    )
    secret = re.search(r'id="new-secret">(mk_[\w-]+)<', _text(key))
    assert secret
    assert secret.group(1) not in _text(client.get("/console/admin/keys"))
    assert (
        client.get(
            "/v1/admin/audit", headers={"Authorization": f"Bearer {secret.group(1)}"}
        ).status_code
        == 200
    )
    key_id = re.search(r"Created key (\w+) ", _text(key)).group(1)  # type: ignore[union-attr]
    revoked = post_form(client, "/console/admin/keys", f"/console/admin/keys/{key_id}/revoke", {})
    assert "Revoked key" in _text(revoked)
    assert (
        client.get(
            "/v1/admin/audit", headers={"Authorization": f"Bearer {secret.group(1)}"}
        ).status_code
        == 401
    )
    actors = {e.actor for e in _trail(app) if e.action in {"key.created", "staff.created"}}
    assert "staff:admin0@example.com" in actors


def test_the_composer_takes_languages_and_a_schedule(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
) -> None:
    device(locale="id-ID")
    device(locale="en-GB")
    client = staff_client("marketing")
    fields = {
        "content": "id | Diskon | Hanya minggu ini\nen | Sale | This week only",
        "default_locale": "en",
        "local_time": "09:30",
        "fallback_timezone": "Asia/Jakarta",
        "send_at": "2030-01-02T00:00",
        "link": "app://offers",
    }
    preview = _text(_compose(client, action="preview", **fields))
    assert "Preview: 2 eligible devices now" in preview
    assert "<li>id: 1</li>" in preview and "<li>en: 1</li>" in preview
    bad = _compose(client, action="preview", content="id | only a title")
    assert bad.status_code == 422 and "tag | title | body" in _text(bad)

    created = _compose(client, action="create", **fields)
    assert created.status_code == 303, _text(created)
    page_url = created.headers["Location"].split("?")[0]
    page = _text(client.get(page_url))
    assert "not before 2030-01-02 00:00 UTC at 09:30 local time" in page
    assert "id: Diskon" in page
    assert post_form(client, page_url, f"{page_url}/send", {}).status_code == 303
    assert "scheduled" in _text(client.get(page_url))


def test_admin_creates_and_updates_categories_whose_kind_is_fixed(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
) -> None:
    client = staff_client("admin")
    form = {
        "key": "order_updates",
        "name": "Order updates",
        "kind": "transactional",
        "default_enabled": "on",
        "user_can_opt_out": "on",
        "android_channel_id": "orders",
        "ios_interruption_level": "active",
    }
    created = post_form(client, "/console/admin/categories", "/console/admin/categories", form)
    assert created.status_code == 200 and "Created category order_updates." in _text(created)
    renamed = post_form(
        client,
        "/console/admin/categories",
        "/console/admin/categories",
        {**form, "name": "Your orders"},
    )
    assert "Updated category order_updates." in _text(renamed)
    assert "Your orders" in _text(client.get("/console/admin/categories"))
    immutable = post_form(
        client,
        "/console/admin/categories",
        "/console/admin/categories",
        {**form, "kind": "promotional", "default_enabled": ""},
    )
    assert immutable.status_code == 422
    bad_key = post_form(
        client, "/console/admin/categories", "/console/admin/categories", {**form, "key": "Bad"}
    )
    assert bad_key.status_code == 422
    assert {e.actor for e in _trail(app, target="order_updates")} == {"staff:admin0@example.com"}


def test_console_forms_refuse_bad_input_as_html(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
) -> None:
    admin = staff_client("admin")
    staff_page, keys_page = "/console/admin/staff", "/console/admin/keys"
    post_form(admin, staff_page, staff_page, {"email": "x@example.com", "role": "support"})
    for change in ({"change": "enable"}, {"change": "reset"}):
        done = post_form(
            admin, staff_page, f"{staff_page}/change", {"email": "x@example.com", **change}
        )
        assert done.status_code == 200
    assert "/console/enrol/sl_" in _text(done)
    assert (
        post_form(admin, staff_page, f"{staff_page}/change", {"email": "x@example.com"}).status_code
        == 404
    )
    assert (
        post_form(
            admin, staff_page, f"{staff_page}/change", {"email": "x@example.com", "change": "role"}
        ).status_code
        == 422
    )
    assert post_form(admin, staff_page, staff_page, {"email": "y@example.com"}).status_code == 422
    assert (
        post_form(admin, staff_page, staff_page, {"email": "no", "role": "admin"}).status_code
        == 422
    )
    assert post_form(admin, keys_page, keys_page, {"role": "root", "name": ""}).status_code == 422
    assert post_form(admin, keys_page, f"{keys_page}/NOKEY/revoke", {}).status_code == 404

    privacy = staff_client("privacy")
    made = device(account_id="acct-z")
    for form in ({"kind": "planet", "id": "x"}, {"kind": "device", "id": ""}):
        assert (
            post_form(privacy, "/console/privacy", "/console/privacy/export", form).status_code
            == 422
        )
    assert (
        post_form(
            privacy,
            "/console/privacy",
            "/console/privacy/erase",
            {"kind": "account", "id": "acct-z", "reason": "nope", "confirm": "acct-z"},
        ).status_code
        == 422
    )
    assert (
        post_form(
            privacy, "/console/privacy", "/console/privacy/terminate", {"account_id": "acct-z"}
        ).status_code
        == 422
    )
    erased = post_form(
        privacy,
        "/console/privacy",
        "/console/privacy/erase",
        {"kind": "account", "id": "acct-z", "reason": "user_request", "confirm": "acct-z"},
    )
    assert "Erased the account (1 device)" in _text(erased)
    with app.app_context():
        assert db.session.get(Device, made.id) is None
        db.session.commit()
    gone = post_form(
        privacy,
        "/console/privacy",
        "/console/privacy/erase",
        {"kind": "device", "id": made.id, "reason": "other", "confirm": made.id},
    )
    assert gone.status_code == 404 and gone.mimetype == "text/html"

    support = staff_client("support")
    assert support.get("/console/audit", query_string={"actor": "x" * 100}).status_code == 422
    bad_cursor = support.get("/console/devices", query_string={"platform": "ios", "cursor": "!!"})
    assert bad_cursor.status_code == 422 and bad_cursor.mimetype == "text/html"
    for page, filters in (("/console/devices", {"platform": "ios"}), ("/console/audit", {})):
        # An edited "next page" link: no field holds the cursor, so the summary offers
        # the first page instead of a link to a field that is not there.
        edited = support.get(page, query_string={**filters, "cursor": "A" * 201})
        assert edited.status_code == 422
        assert 'href="#f-cursor"' not in _text(edited)
        assert f'<a href="{page}">Start again from the first page</a>' in _text(edited)
    too_big = support.post("/console/sign-out", data={"csrf_token": "x" * (2 * 1024 * 1024)})
    assert too_big.status_code == 413 and too_big.mimetype == "text/html"
    assert (
        post_form(support, "/console/devices", "/console/devices/NOPE/enable", {}).status_code
        == 404
    )


# --- errors are pages for people -----------------------------------------------------------


def test_unknown_console_pages_and_wrong_methods_are_html_pages_in_the_layout(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
) -> None:
    client = staff_client("support")
    missing = client.get("/console/no-such-page")
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    html = _text(missing)
    assert "<h1>Page not found</h1>" in html and 'aria-label="Main"' in html  # the menu
    assert "Back to the console" in html
    assert "default-src 'none'" in missing.headers["Content-Security-Policy"]
    assert missing.headers["Cache-Control"] == "no-store"

    wrong = client.delete("/console/devices")
    assert wrong.status_code == 405 and wrong.mimetype == "text/html"
    assert "GET" in wrong.headers["Allow"] and "Not possible here" in _text(wrong)

    stranger = app.test_client().get("/console/nothing/here")
    assert stranger.status_code == 404 and "Sign in to the console" in _text(stranger)

    api = app.test_client().get("/v1/no-such-resource")
    assert api.status_code == 404 and api.is_json
    assert api.get_json()["error"] == "not_found"


def test_a_failure_on_our_side_is_an_html_page_that_quotes_nothing(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = staff_client("support")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret detail from the database")

    monkeypatch.setattr("mobile_api.services.staff.session_for", broken)
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)  # as in production
    failed = client.get("/console/devices")
    assert failed.status_code == 500 and failed.mimetype == "text/html"
    html = _text(failed)
    assert "Something went wrong" in html and "secret detail" not in html
    assert "default-src 'none'" in failed.headers["Content-Security-Policy"]


def test_an_ended_session_says_so_on_the_sign_in_page(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
) -> None:
    client = staff_client("marketing")
    with app.app_context():
        db.session.execute(
            sa.update(StaffSession).values(last_seen_at=utcnow() - timedelta(minutes=31))
        )
        db.session.commit()
    gone = client.get("/console/campaigns?state=draft")
    assert gone.status_code == 303
    assert "ended=1" in gone.headers["Location"]
    assert any("console=;" in c for c in gone.headers.getlist("Set-Cookie"))  # the dead cookie
    page = _text(client.get(gone.headers["Location"]))
    assert "Your session has ended" in page and "more than 30 minutes" in page
    assert 'name="next" value="/console/campaigns?state=draft"' in page
    # Someone who never signed in is not told a session ended.
    fresh = app.test_client().get("/console/campaigns")
    assert "ended" not in fresh.headers["Location"]


def test_a_stale_form_explains_itself_and_links_back_to_the_form(
    staff_client: Clients,  # noqa: F811
) -> None:
    client = staff_client("admin")
    stale = client.post(
        "/console/admin/staff",
        data={"csrf_token": "old", "email": "z@example.com", "role": "support"},
        headers={"Referer": "http://localhost/console/admin/staff?x=1"},
    )
    assert stale.status_code == 403 and stale.mimetype == "text/html"
    html = _text(stale)
    assert "nothing was changed" in html
    assert '<a href="/console/admin/staff?x=1">Back to the form</a>' in html
    elsewhere = client.post(
        "/console/admin/staff",
        data={"csrf_token": "old"},
        headers={"Referer": "http://localhost/v1/devices"},
    )
    assert "Back to the form" not in _text(elsewhere)


def _campaign_row(on: Flask, campaign_id: str) -> Campaign:
    with on.app_context():
        found = db.session.get(Campaign, campaign_id)
        assert found is not None
        db.session.expunge(found)
        db.session.commit()
    return found


def test_marketing_edits_a_draft_in_the_composer_through_the_apis_rules(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
) -> None:
    from mobile_api.console.marketing import campaign_form

    device(platform="ios")  # outside the draft's audience until it is widened

    client = staff_client("marketing")
    created = _compose(
        client,
        action="create",
        data="screen=offers",
        content="id | Diskon | Hanya minggu ini",
        default_locale="en",
        link="app://offers",
        image_url="https://cdn.example.com/a.png",
        platforms="android",
        locales="id-ID\nen",
        last_seen_within_days="30",
        send_at="2030-01-02T08:15",
        badge="3",
    )
    page = created.headers["Location"].split("?")[0]
    campaign_id = page.rsplit("/", 1)[-1]
    assert f'href="{page}/edit"' in _text(client.get(page))
    before = _campaign_row(app, campaign_id)

    editor = _text(client.get(f"{page}/edit"))
    assert "<h1>Edit campaign</h1>" in editor and "Save changes" in editor
    assert 'value="https://cdn.example.com/a.png"' in editor
    assert "id | Diskon | Hanya minggu ini</textarea>" in editor
    assert 'value="2030-01-02T08:15"' in editor
    assert 'value="android" checked' in editor

    # The saved form, submitted unchanged, changes nothing.
    with app.test_request_context():
        saved = list(campaign_form(before).items(multi=True))
    token = csrf_of(editor)
    same = client.post(f"{page}/edit", data=MultiDict([("csrf_token", token), *saved]))
    assert same.status_code == 303 and "done=saved" in same.headers["Location"]
    after = _campaign_row(app, campaign_id)
    fields = ("title", "data", "content", "audience", "image_url", "link", "send_at", "badge")
    assert [getattr(after, f) for f in fields] == [getattr(before, f) for f in fields]

    # Previewing the edited audience counts it and saves nothing.
    widened = [(k, v) for k, v in saved if k not in {"platforms", "locales"}]
    previewed = client.post(
        f"{page}/edit",
        data=MultiDict([("csrf_token", token), ("action", "preview"), *widened]),
    )
    assert previewed.status_code == 200
    assert "Preview: 1 eligible device now" in _text(previewed)
    assert "Save changes" in _text(previewed)
    assert _campaign_row(app, campaign_id).audience == before.audience

    # The API's validation messages, at their fields; nothing saved.
    bad = [(k, v) for k, v in saved if k not in {"image_url", "title"}]
    refused = client.post(
        f"{page}/edit",
        data=MultiDict(
            [("csrf_token", token), ("image_url", "http://plain.example"), ("title", ""), *bad]
        ),
    )
    assert refused.status_code == 422
    html = _text(refused)
    assert '<p class="error" id="f-image_url-error">An https:// URL.</p>' in html
    assert '<p class="error" id="f-title-error">Missing data for required field.</p>' in html
    assert _campaign_row(app, campaign_id).image_url == "https://cdn.example.com/a.png"

    # A change and a cleared field are saved, audited as the person.
    changed = [(k, v) for k, v in saved if k not in {"image_url", "title", "locales"}]
    client.post(
        f"{page}/edit", data=MultiDict([("csrf_token", token), ("title", "Spring sale"), *changed])
    )
    after = _campaign_row(app, campaign_id)
    assert after.title == "Spring sale" and after.image_url is None
    assert "locales" not in after.audience and after.audience["platforms"] == ["android"]
    events = _trail(app, action="campaign.update")
    assert len(events) == 2 and all(e.actor.startswith("staff:marketing") for e in events)


def test_a_scheduled_campaign_keeps_its_audience_and_a_sending_one_is_not_editable(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
) -> None:
    from mobile_api.console.marketing import campaign_form

    device()
    client = staff_client("marketing")
    later = _compose(client, action="create", platforms="android", send_at="2030-01-02T08:15")
    page = later.headers["Location"].split("?")[0]
    assert post_form(client, page, f"{page}/send", {}).status_code == 303
    assert _campaign_row(app, page.rsplit("/", 1)[-1]).status == "scheduled"
    editor = _text(client.get(f"{page}/edit"))
    assert "its category and audience are fixed" in editor
    assert '<select id="f-category_key" name="category_key" disabled>' in editor
    with app.test_request_context():
        saved = campaign_form(_campaign_row(app, page.rsplit("/", 1)[-1]))
    # A browser does not send disabled fields: the rest is saved.
    kept = [(k, v) for k, v in saved.items(multi=True) if k not in {"category_key", "platforms"}]
    # The preview counts the saved audience (one android device), not an empty one.
    device(platform="ios")
    previewed = client.post(
        f"{page}/edit",
        data=MultiDict([("csrf_token", csrf_of(editor)), ("action", "preview"), *kept]),
    )
    assert "Preview: 1 eligible device now" in _text(previewed), _text(previewed)
    moved = [(k, "2030-02-01T10:00" if k == "send_at" else v) for k, v in kept]
    done = client.post(f"{page}/edit", data=MultiDict([("csrf_token", csrf_of(editor)), *moved]))
    assert done.status_code == 303, _text(done)
    found = _campaign_row(app, page.rsplit("/", 1)[-1])
    assert found.audience == {"platforms": ["android"]} and found.send_at is not None
    assert found.send_at.strftime("%Y-%m-%d %H:%M") == "2030-02-01 10:00"

    now = _compose(client, action="create")
    sending = now.headers["Location"].split("?")[0]
    post_form(client, sending, f"{sending}/send", {})
    assert 'href="' + sending + '/edit"' not in _text(client.get(sending))
    refused = client.get(f"{sending}/edit")
    assert refused.status_code == 409 and refused.mimetype == "text/html"
    assert "can no longer be edited" in _text(refused)


def test_support_sees_the_devices_recent_notifications_and_their_outcome(
    app: Flask,  # noqa: F811
    staff_client: Clients,  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
    fcm: FakeFcmServer,  # noqa: F811
    notify: dict[str, str],  # noqa: F811
    post_notification: Callable[..., Any],  # noqa: F811
) -> None:
    made, other = device(), device()
    client = staff_client("support")
    assert "No notification has been sent" in _text(client.get(f"/console/devices/{made.id}"))
    accepted = post_notification(
        notify, notification_body(device_ids=[made.id], title=f"Reply {XSS}")
    )
    assert accepted.status_code == 202, accepted.get_json()
    notification_id = accepted.get_json()["id"]
    page = _text(client.get(f"/console/devices/{made.id}"))
    assert notification_id in page and "pending" in page
    assert XSS not in page and "Reply &lt;img" in page
    drain(app)
    page = _text(client.get(f"/console/devices/{made.id}"))
    section = page.split('id="notif-h"')[1]
    assert notification_id in section and "<td>sent</td>" in section
    assert notification_id not in _text(client.get(f"/console/devices/{other.id}"))
