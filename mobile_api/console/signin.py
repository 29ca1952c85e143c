"""Sign-in (password and TOTP), sign-out, and the one-time enrolment link."""

from __future__ import annotations

import math
import time
from typing import Any

import segno
from flask import current_app, g, redirect, render_template, request, url_for
from limits import parse
from markupsafe import Markup, escape

from mobile_api.console import HOME, bp, requires, session_cookie_name, set_cookie
from mobile_api.errors import EnrolmentRefused, SignInRefused
from mobile_api.extensions import db, limiter
from mobile_api.http_errors import domain_error_message
from mobile_api.services import staff as staff_service
from mobile_api.services.secrets import hash_secret
from models import StaffRole

_EVERYONE = tuple(StaffRole)


def _limits() -> list[tuple[Any, str]]:
    """The failed-attempt limits this sign-in counts against: per client IP and per email."""
    config = current_app.config
    email = request.form.get("email", "").strip().lower()
    return [
        (parse(config["CONSOLE_SIGN_IN_LIMIT_IP"]), f"console-sign-in:ip:{request.remote_addr}"),
        # The email's hash: the limiter's storage (Redis) never holds addresses.
        (
            parse(config["CONSOLE_SIGN_IN_LIMIT_EMAIL"]),
            f"console-sign-in:email:{hash_secret(email)[:32]}",
        ),
    ]


def _seconds_blocked() -> int:
    """0 when sign-in may be tried; else seconds until the exhausted limit lets it again."""
    if not limiter.enabled:
        return 0
    blocked = 0.0
    for item, key in _limits():
        if not limiter.limiter.test(item, key):
            reset_at = limiter.limiter.get_window_stats(item, key).reset_time
            blocked = max(blocked, reset_at - time.time(), 1)
    return math.ceil(blocked)


def _count_failure() -> None:
    if limiter.enabled:
        for item, key in _limits():
            limiter.limiter.hit(item, key)


def _safe_next(target: str | None) -> str | None:
    # Only a path of ours: never an absolute URL or a scheme-relative one.
    if target and target.startswith("/console/") and not target.startswith("//"):
        return target
    return None


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    """Email, password and the authenticator's current code."""
    next_page = _safe_next(request.values.get("next"))
    if request.method == "GET":
        notice = None
        if request.args.get("ended") == "1":
            idle = int(current_app.config["CONSOLE_IDLE_MINUTES"])
            notice = (
                f"Your session has ended: it was idle for more than {idle} minutes, signed out, "
                "or your account was changed. Sign in again to carry on"
                + (" where you were." if next_page else ".")
            )
        return render_template("console/sign_in.html", next=next_page, error=None, notice=notice)
    blocked = _seconds_blocked()
    if blocked:
        minutes = math.ceil(blocked / 60)
        message = (
            "Too many failed sign-in attempts. For your account's safety, sign-in is paused: "
            f"try again in {minutes} minute{'s' if minutes != 1 else ''}."
        )
        page = render_template("console/sign_in.html", next=next_page, error=message)
        return page, 429, {"Retry-After": str(blocked)}
    try:
        secret, signed_in = staff_service.sign_in(
            db.session,
            request.form.get("email", ""),
            request.form.get("password", ""),
            request.form.get("code", ""),
            request_id=g.get("request_id"),
        )
    except SignInRefused as refused:
        _count_failure()
        return (
            render_template(
                "console/sign_in.html", next=next_page, error=domain_error_message(refused)
            ),
            401,
        )
    signed = redirect(next_page or url_for(HOME[StaffRole(signed_in.role)]), 303)
    set_cookie(signed, session_cookie_name(), secret)
    return signed


@bp.route("/sign-out", methods=["POST"])
@requires(*_EVERYONE)
def sign_out() -> Any:
    """End this session."""
    staff_service.sign_out(db.session, g.staff.session_id)
    response = redirect(url_for("console.sign_in"), 303)
    set_cookie(response, session_cookie_name(), "", max_age=0)
    return response


@bp.route("/")
@requires(*_EVERYONE)
def index() -> Any:
    """The signed-in person's home page."""
    return redirect(url_for(HOME[StaffRole(g.staff.role)]), 303)


QR_LABEL = "QR code to scan with your authenticator app; it holds the secret shown beside it"


def qr_code_svg(uri: str) -> Markup:
    """`uri` as a QR code: an inline SVG image (no script, no style attribute) with a label."""
    svg = segno.make(uri, error="m").svg_inline(scale=5, dark="#000", light="#fff")
    # segno writes only sizes, colours and path data (no text of the URI, as no title is
    # asked for), so the markup is safe; the image's role and name are ours.
    labelled = svg.replace("<svg ", f'<svg role="img" aria-label="{escape(QR_LABEL)}" ', 1)
    return Markup(labelled)  # noqa: S704


@bp.route("/enrol/<secret>", methods=["GET", "POST"])
def enrol(secret: str) -> Any:
    """The one-time link: set a password and enrol the authenticator."""
    enrolment = staff_service.enrolment(db.session, secret)
    qr_code = qr_code_svg(enrolment.otpauth_uri)
    if request.method == "GET":
        return render_template(
            "console/enrol.html", enrolment=enrolment, qr_code=qr_code, error=None
        )
    try:
        email = staff_service.complete_enrolment(
            db.session,
            secret,
            request.form.get("password", ""),
            request.form.get("confirm", ""),
            request.form.get("code", ""),
        )
    except EnrolmentRefused as refused:
        return (
            render_template(
                "console/enrol.html",
                enrolment=enrolment,
                qr_code=qr_code,
                error=domain_error_message(refused),
            ),
            422,
        )
    return render_template("console/enrolled.html", email=email)
