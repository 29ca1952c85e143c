"""The staff console (/console/): server-rendered pages over the same services as the API.

Security lives here, once for every page: a server-side session looked up from an
HttpOnly, SameSite=Strict cookie (Secure unless a test runs over plain http), an idle
timeout, a refusal of cross-origin posts, a CSRF token on every form, the role each
page needs (admin passes everywhere, as admin keys do), and a Content-Security-Policy
that allows no inline script or style. Pages hold no business rule of their own.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import SplitResult, urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from mobile_api.errors import DomainError, NotFound
from mobile_api.extensions import api, db
from mobile_api.http_errors import domain_error_message, domain_error_row
from mobile_api.routes.fields import UNSTORABLE_TEXT
from mobile_api.services import staff as staff_service
from mobile_api.services.caller import Caller
from models import StaffRole

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
PRE_SESSION_CSRF_COOKIE = "console_csrf"
_ROLES_ATTRIBUTE = "_console_roles"
_PUBLIC = ("console.static", "console.sign_in", "console.enrol")


def caller() -> Caller:
    """The signed-in staff member as the services' caller, audited as `staff:<email>`."""
    signed_in: staff_service.SignedIn = g.staff
    return signed_in.caller(g.get("request_id"))


def requires(*roles: StaffRole) -> Callable[[F], F]:
    """Let only signed-in staff of these roles (and admins) see the page."""

    def decorator(view: F) -> F:
        setattr(view, _ROLES_ATTRIBUTE, frozenset(roles) | {StaffRole.ADMIN})
        return view

    return decorator


def secure_cookies() -> bool:
    """Cookies are Secure, except for a test app over plain http."""
    return not (current_app.testing and not request.is_secure)


def session_cookie_name() -> str:
    """`__Host-` binds the cookie to this host and path /, which browsers allow only if Secure."""
    return "__Host-console" if secure_cookies() else "console"


def set_cookie(response: BaseResponse, name: str, value: str, max_age: int | None = None) -> None:
    """A console cookie: HttpOnly, SameSite=Strict, Secure (see secure_cookies), path /."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=secure_cookies(),
        httponly=True,
        samesite="Strict",
    )


def csrf_token() -> str:
    """The token every form of this page carries: the session's, else the pre-session cookie's."""
    if g.get("staff") is not None:
        token: str = g.staff.csrf_token
        return token
    if "pre_session_csrf" not in g:
        g.pre_session_csrf = request.cookies.get(PRE_SESSION_CSRF_COOKIE) or secrets.token_hex(32)
    token = g.pre_session_csrf
    return token


def _view_roles() -> frozenset[str] | None:
    if request.endpoint is None or request.endpoint in _PUBLIC:
        return None
    view = current_app.view_functions.get(request.endpoint)
    return getattr(view, _ROLES_ATTRIBUTE, frozenset())


def _same_origin() -> bool:
    """A post comes from our own pages: its Origin (or Referer) is this host."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if origin is None:
        # Browsers send Origin on every form post; a client that sends neither is
        # not a browser someone was tricked into using.
        return True
    parts = _split(origin)
    return parts is not None and f"{parts.scheme}://{parts.netloc}" == request.host_url.rstrip("/")


def _split(url: str) -> SplitResult | None:
    """`url`'s parts; None if it cannot be parsed (an IPv6 host's bracket left open)."""
    try:
        return urlsplit(url)
    except ValueError:
        return None


def _signed_in(cookie: str | None) -> staff_service.SignedIn | None:
    """Who the session cookie signs in, if anybody."""
    if not cookie:
        return None
    config = current_app.config
    return staff_service.session_for(
        db.session,
        cookie,
        idle=timedelta(minutes=int(config["CONSOLE_IDLE_MINUTES"])),
        lifetime=timedelta(hours=int(config["CONSOLE_SESSION_HOURS"])),
    )


def _own_page(url: str | None) -> str | None:
    """The path of `url` if it is a console page of this host (a safe link back)."""
    parts = _split(url) if url else None
    if parts is None:
        return None
    if parts.netloc and f"{parts.scheme}://{parts.netloc}" != request.host_url.rstrip("/"):
        return None
    if not parts.path.startswith(f"{bp.url_prefix}/") or parts.path.startswith("//"):
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


@bp.before_request
def _authenticate() -> Any:
    cookie = request.cookies.get(session_cookie_name())
    g.staff = _signed_in(cookie)
    if request.method == "POST" and not _same_origin():
        return error_page(403, "Cross-site request refused", "This form did not come from here.")
    roles = _view_roles()
    if roles is not None and g.staff is None:
        target = request.full_path if request.method == "GET" else None
        # A cookie that no longer signs anybody in: say so on the sign-in page.
        ended = "1" if cookie else None
        response = redirect(url_for("console.sign_in", next=target, ended=ended), 303)
        if cookie:
            set_cookie(response, session_cookie_name(), "", max_age=0)
        return response
    if request.method == "POST":
        sent = request.form.get("csrf_token", "")
        if not hmac.compare_digest(sent.encode(), csrf_token().encode()):
            return error_page(
                403,
                "Form expired",
                "This form is out of date or did not come from here, so nothing was changed. "
                "Go back to the form, reload it, and submit it again.",
                back=_own_page(request.referrer),
            )
    if roles is not None and g.staff.role not in roles:
        return error_page(403, "Not for your role", "Your role may not open this page.")
    return _refuse_unstorable_text()


def _refuse_unstorable_text() -> Response | None:
    """Refuse a NUL character or an unpaired surrogate before any page reads it: no
    database stores them (the API refuses them in JSON, query and path alike)."""
    for value in (request.view_args or {}).values():
        if isinstance(value, str) and UNSTORABLE_TEXT.search(value):
            raise NotFound("There is no console page at this address.")
    sent = [*request.args.items(multi=True), *request.form.items(multi=True)]
    if any(UNSTORABLE_TEXT.search(name + value) for name, value in sent):
        return error_page(
            422,
            "Characters that cannot be kept",
            "What was sent holds a NUL character or broken text, which cannot be stored, so "
            "nothing was changed. Go back, remove it, and send it again.",
            back=_own_page(request.referrer),
        )
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    if g.get("staff") is None and "pre_session_csrf" in g:
        set_cookie(response, PRE_SESSION_CSRF_COOKIE, g.pre_session_csrf)
    return response


def error_page(code: int, title: str, message: str, back: str | None = None) -> Response:
    """An HTML error page with the status `code`, and a link back (`back`, else home)."""
    response = Response(
        render_template("console/error.html", code=code, title=title, message=message, back=back),
        status=code,
    )
    return response


_PAGE_TITLES = {
    404: "Page not found",
    405: "Not possible here",
    500: "Something went wrong",
}
_PAGE_MESSAGES = {
    404: "There is no console page at this address. It may have moved, or the link is mistyped.",
    405: "This page cannot be used that way; open it from the console's menu.",
    500: "Something went wrong on our side; it has been logged. Please try again.",
}


def _error_response(error: HTTPException | DomainError) -> Response:
    """Any failure under /console/ as a page in the console's layout (the API's errors
    are JSON; http_errors.Api calls this for every error under our prefix)."""
    if isinstance(error, DomainError):
        code, identifier, _default = domain_error_row(error)
        response = error_page(
            code, identifier.replace("_", " ").capitalize(), domain_error_message(error)
        )
        if error.retry_after is not None:
            response.headers["Retry-After"] = str(error.retry_after)
        return response
    code = error.code or 500
    if "staff" not in g and code in {404, 405}:
        # No console route matched, so _authenticate did not run: the menu still
        # belongs on the page of someone signed in.
        g.staff = _signed_in(request.cookies.get(session_cookie_name()))
    message = _PAGE_MESSAGES.get(code) or error.description or error.name
    response = error_page(code, _PAGE_TITLES.get(code, error.name), message)
    for name, value in error.get_headers():
        if name.lower() not in {"content-type", "content-length"}:
            response.headers.setdefault(name, value)
    if request.blueprint != bp.name:  # no route of ours matched: our headers all the same
        _headers(response)
    return response


HOME = {
    StaffRole.SUPPORT: "console.devices",
    StaffRole.PRIVACY: "console.privacy_page",
    StaffRole.MARKETING: "console.campaigns",
    StaffRole.ADMIN: "console.staff",
}


@bp.app_template_global()
def nav() -> list[tuple[str, str]]:
    """The links of the signed-in person's menu: (endpoint, label)."""
    staff = g.get("staff")
    if staff is None:
        return []
    links = {
        StaffRole.SUPPORT: [("console.devices", "Devices"), ("console.audit_trail", "Audit trail")],
        StaffRole.PRIVACY: [
            ("console.privacy_page", "Privacy requests"),
            ("console.audit_trail", "Audit"),
        ],
        StaffRole.MARKETING: [
            ("console.campaigns", "Campaigns"),
            ("console.compose", "New campaign"),
            ("console.insights", "Insights"),
        ],
        StaffRole.ADMIN: [
            ("console.staff", "Staff"),
            ("console.keys", "API keys"),
            ("console.categories", "Categories"),
            ("console.devices", "Devices"),
            ("console.privacy_page", "Privacy"),
            ("console.campaigns", "Campaigns"),
            ("console.insights", "Insights"),
            ("console.audit_trail", "Audit trail"),
        ],
    }
    return links[StaffRole(staff.role)]


bp.add_app_template_global(csrf_token, "csrf_token")


@bp.app_template_global()
def query_without_cursor(query: dict[str, str]) -> dict[str, str]:
    """A page's filters, for the link to its next page."""
    return {name: value for name, value in query.items() if name != "cursor"}


def init_app(app: Flask) -> None:
    """Register the console's pages."""
    from mobile_api.console import admin, marketing, privacy, signin, support  # noqa: F401

    app.register_blueprint(bp)
    api.error_pages_under(f"{bp.url_prefix}/", _error_response)
