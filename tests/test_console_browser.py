"""The staff console in headless Chromium: each role's journey, security and accessibility.

axe-core (vendored, pinned: tests/vendor/axe-core) runs on every main page and must
report no serious or critical violation. Screenshots of the main pages go to
bench/out/console/ (CONSOLE_SCREENSHOTS overrides), for reviewers.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyotp
import pytest
from flask import Flask
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from mobile_api.extensions import db
from models import Device
from tests.campaign_fixtures import (  # noqa: F401 - fixtures
    app,
    device,
    drain,
    fcm,
    fcm_settings,
)
from tests.console_fixtures import PASSWORD, Person, person  # noqa: F401 - fixtures
from tests.fakes.fcm_server import FakeFcmServer

Browser = webdriver.Chrome
AXE = Path(__file__).parent / "vendor" / "axe-core"
SCREENSHOTS = Path(
    os.environ.get("CONSOLE_SCREENSHOTS", Path(__file__).parent.parent / "bench/out/console")
)
XSS = "<img src=x onerror=alert(1)>"


def test_the_vendored_axe_is_the_pinned_one() -> None:
    recorded = (AXE / "VERSION").read_text(encoding="utf-8")
    assert "axe-core 4.14.1" in recorded
    digest = re.search(r"^([0-9a-f]{64})  axe.min.js$", recorded, re.MULTILINE)
    assert digest
    assert hashlib.sha256((AXE / "axe.min.js").read_bytes()).hexdigest() == digest.group(1)


@pytest.fixture
def page(browser: Browser, live_server: str) -> Iterator[Browser]:
    """The shared browser, signed out, back at desktop width afterwards."""
    browser.delete_all_cookies()
    browser.set_window_size(1280, 1024)
    yield browser
    browser.delete_all_cookies()
    browser.set_window_size(1280, 1024)


def _open(browser: Browser, url: str) -> None:
    browser.get(url)
    WebDriverWait(browser, 10).until(
        lambda b: b.execute_script("return document.readyState") == "complete"
    )


def _sign_in(browser: Browser, base: str, someone: Person, steps_ahead: int = 0) -> None:
    _open(browser, f"{base}/console/sign-in")
    browser.find_element(By.ID, "f-email").send_keys(someone.email)
    browser.find_element(By.ID, "f-password").send_keys(someone.password)
    browser.find_element(By.ID, "f-code").send_keys(someone.code(steps_ahead))
    browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda b: "/sign-in" not in b.current_url)


def _submit(browser: Browser, form_action: str, button_text: str | None = None) -> None:
    """Click the submit button of the form posting to `form_action` and wait for the next page."""
    form = browser.find_element(By.CSS_SELECTOR, f"form[action*='{form_action}']")
    buttons = form.find_elements(By.CSS_SELECTOR, "button[type=submit]")
    button = next(b for b in buttons if button_text is None or button_text in b.text)
    old = browser.find_element(By.TAG_NAME, "html")
    button.click()

    def left(_browser: Browser) -> bool:
        try:
            old.is_enabled()
        except WebDriverException:
            # Stale, or (Chromium, mid-navigation) "node does not belong to the document".
            return True
        return False

    WebDriverWait(browser, 10).until(left)


def _axe(browser: Browser) -> None:
    """No serious or critical accessibility violation on the current page (axe-core)."""
    browser.execute_script((AXE / "axe.min.js").read_text(encoding="utf-8"))
    violations = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact,"
        " nodes: v.nodes.map(n => n.target.join(' '))}))));"
    )
    serious = [v for v in violations if v["impact"] in ("serious", "critical")]
    assert not serious, f"{browser.current_url}: {serious}"


def _fits_phone(browser: Browser, name: str) -> None:
    """At phone width the page does not scroll sideways (tables scroll inside their region)."""
    browser.set_window_size(390, 844)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    _shot(browser, f"{name}-phone")
    widest = browser.execute_script(
        "const w = document.documentElement.clientWidth;"
        "return [...document.querySelectorAll('body *')]"
        ".filter(e => e.getBoundingClientRect().right > w + 1 && !e.closest('.scroll'))"
        ".slice(0, 3).map(e => e.tagName + '.' + e.className + '#' + e.id)"
    )
    browser.set_window_size(1280, 1024)
    assert overflow <= 0, f"{browser.current_url} is {overflow}px too wide at phone width: {widest}"


def _shot(browser: Browser, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def _check(browser: Browser, name: str) -> None:
    """Accessibility, phone width and a screenshot of the current page."""
    _axe(browser)
    _shot(browser, name)
    _fits_phone(browser, name)


def _heading(browser: Browser) -> str:
    return str(browser.find_element(By.TAG_NAME, "h1").text)


def test_enrol_from_the_one_time_link_then_sign_in_by_keyboard(
    page: Browser,
    live_server: str,
    app: Flask,  # noqa: F811
) -> None:
    created = app.test_cli_runner().invoke(
        args=["staff", "create", "--email", "eve@example.com", "--role", "support"]
    )
    link = created.output.strip().splitlines()[-1].replace("http://127.0.0.1:8000", live_server)
    _open(page, link)
    _check(page, "enrol")
    qr_code = page.find_element(By.CSS_SELECTOR, "figure.qr svg[role=img]")
    assert qr_code.is_displayed() and qr_code.size["width"] >= 150
    assert qr_code.size["width"] == qr_code.size["height"]
    assert "QR code" in str(qr_code.get_attribute("aria-label"))
    secret = page.find_element(By.ID, "totp-secret").text
    totp = pyotp.TOTP(secret)
    page.find_element(By.ID, "f-password").send_keys(PASSWORD)
    page.find_element(By.ID, "f-confirm").send_keys(PASSWORD)
    page.find_element(By.ID, "f-code").send_keys(totp.at(time.time() - 30))
    _submit(page, "/console/enrol/", "Save and finish")
    assert _heading(page) == "You are set up"

    _open(page, f"{live_server}/console/sign-in")
    _check(page, "sign-in")
    # Keyboard only: Tab from the top reaches the skip link, then the fields in order.
    body = page.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    assert page.switch_to.active_element.text == "Skip to content"
    page.switch_to.active_element.send_keys(Keys.ENTER)
    actions = webdriver.ActionChains(page)
    actions.send_keys(Keys.TAB, "eve@example.com", Keys.TAB, PASSWORD, Keys.TAB)
    actions.send_keys(totp.now(), Keys.ENTER).perform()
    WebDriverWait(page, 10).until(lambda b: b.current_url.endswith("/console/devices"))
    assert _heading(page) == "Devices"


def test_support_finds_a_hostile_device_model_as_text_and_disables_the_device(
    page: Browser,
    live_server: str,
    app: Flask,  # noqa: F811
    person: Callable[[str], Person],  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
) -> None:
    made = device(device_model=XSS, account_id="acct-b1")
    _sign_in(page, live_server, person("support"))
    page.find_element(By.ID, "f-account_id").send_keys("acct-b1")
    page.find_element(By.CSS_SELECTOR, "form[role=search] button").click()
    WebDriverWait(page, 10).until(lambda b: "account_id=acct-b1" in b.current_url)
    _check(page, "device-search")
    page.find_element(By.LINK_TEXT, made.id).click()
    WebDriverWait(page, 10).until(lambda b: b.current_url.endswith(made.id))
    assert page.find_element(By.CSS_SELECTOR, "dd.model").text == XSS
    assert not page.find_elements(By.CSS_SELECTOR, "main img")
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text  # noqa: B018 - reading it is the check
    assert made.push_token not in page.page_source
    _check(page, "device")

    page.find_element(By.ID, "f-reason").send_keys("lost phone")
    page.find_element(By.ID, "f-ticket").send_keys("T-42")
    _submit(page, "/disable")
    assert "Device disabled." in page.find_element(By.CSS_SELECTOR, "[role=status]").text
    with app.app_context():
        found = db.session.get(Device, made.id)
        assert found is not None and found.disabled_ticket == "T-42"
        db.session.commit()

    _open(page, f"{live_server}/console/audit")
    assert "staff:support0@example.com" in page.page_source
    _check(page, "audit")


def test_privacy_exports_erases_and_terminates(
    page: Browser,
    live_server: str,
    app: Flask,  # noqa: F811
    person: Callable[[str], Person],  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    made = device(account_id="acct-p1")
    device(account_id="acct-p2")
    page.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)}
    )
    _sign_in(page, live_server, person("privacy"))
    _check(page, "privacy")
    export_form = page.find_element(By.CSS_SELECTOR, "form[action*='/privacy/export']")
    export_form.find_element(By.NAME, "id").send_keys(made.id)
    export_form.find_element(By.CSS_SELECTOR, "button").click()
    download = tmp_path / "device-export.json"
    WebDriverWait(page, 10).until(lambda _b: download.exists())
    assert made.id in download.read_text(encoding="utf-8")

    erase = page.find_element(By.CSS_SELECTOR, "form[action*='/privacy/erase']")
    erase.find_element(By.ID, "f-erase-id").send_keys(made.id)
    erase.find_element(By.CSS_SELECTOR, "option[value=child_under_13]").click()
    erase.find_element(By.ID, "f-confirm").send_keys(made.id)
    _submit(page, "/privacy/erase")
    assert "Erased the device" in page.find_element(By.CSS_SELECTOR, "[role=status]").text

    page.find_element(By.ID, "f-account_id").send_keys("acct-p2")
    page.find_element(By.ID, "f-terminate_confirm").send_keys("acct-p2")
    _submit(page, "/privacy/terminate")
    assert "will be purged on" in page.find_element(By.CSS_SELECTOR, "[role=status]").text
    _check(page, "privacy-terminated")


def test_marketing_composes_previews_sends_to_fcm_and_follows_the_campaign(
    page: Browser,
    live_server: str,
    app: Flask,  # noqa: F811
    person: Callable[[str], Person],  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
    fcm: FakeFcmServer,  # noqa: F811
) -> None:
    targets = [device() for _ in range(5)]
    device(promotional=False)
    _sign_in(page, live_server, person("marketing"))
    _open(page, f"{live_server}/console/campaigns/new")
    page.find_element(By.ID, "f-name").send_keys("Spring sale")
    page.find_element(By.ID, "f-title").send_keys("20% off")
    page.find_element(By.ID, "f-body").send_keys("Only this week.")
    page.find_element(By.CSS_SELECTOR, "input[name=platforms][value=android]").click()
    _submit(page, "/campaigns/new", "Preview")
    preview = page.find_element(By.CSS_SELECTOR, "section[role=status]").text
    assert "Preview: 5 eligible devices now" in preview and "promotional opt out: 1" in preview
    _check(page, "composer-preview")
    _submit(page, "/campaigns/new", "Create draft")
    assert _heading(page) == "Spring sale"
    # Edit the draft: the composer opens it filled in, refuses a blank title at the field.
    page.find_element(By.LINK_TEXT, "Edit").click()
    WebDriverWait(page, 10).until(lambda b: _heading(b) == "Edit campaign")
    title = page.find_element(By.ID, "f-title")
    assert title.get_attribute("value") == "20% off"
    assert page.find_element(By.CSS_SELECTOR, "input[value=android]").is_selected()
    title.clear()
    page.execute_script("document.getElementById('f-title').removeAttribute('required')")
    _submit(page, "/edit", "Save changes")
    assert "Missing data" in page.find_element(By.ID, "f-title-error").text
    _check(page, "composer-edit-refused")
    page.find_element(By.ID, "f-title").send_keys("25% off")
    _submit(page, "/edit", "Save changes")
    assert _heading(page) == "Spring sale"
    assert "Campaign saved" in page.find_element(By.CSS_SELECTOR, "[role=status]").text
    _submit(page, "/send")
    drain(app)
    assert sorted(m.token for m in fcm.received) == sorted(t.push_token for t in targets)
    assert fcm.received[0].body["message"]["notification"]["title"] == "25% off"  # as edited
    _open(page, page.current_url.split("?")[0])
    assert "completed" in page.find_element(By.CSS_SELECTOR, ".facts").text
    chart = page.find_element(By.CSS_SELECTOR, "svg[role=img]").get_attribute("aria-label")
    assert chart == "Outcomes: targeted 6, sent 5, failed 0, suppressed 1, pending 0"
    _check(page, "campaign")

    _open(page, f"{live_server}/console/campaigns")
    assert "Spring sale" in page.find_element(By.TAG_NAME, "table").text
    _check(page, "campaigns")
    _open(page, f"{live_server}/console/insights")
    assert page.find_elements(By.CSS_SELECTOR, "svg[role=img]")
    _check(page, "insights")


def test_admin_creates_staff_and_a_key_and_checks_the_audit_chain(
    page: Browser,
    live_server: str,
    person: Callable[[str], Person],  # noqa: F811
) -> None:
    _sign_in(page, live_server, person("admin"))
    page.find_element(By.ID, "f-email").send_keys("newbie@example.com")
    _submit(page, "/admin/staff", "Create")
    assert "/console/enrol/sl_" in page.find_element(By.ID, "one-time-link").text
    _check(page, "admin-staff")
    _open(page, f"{live_server}/console/admin/keys")
    page.find_element(By.ID, "f-name").send_keys("helpdesk backend")
    _submit(page, "/admin/keys", "Create")
    assert page.find_element(By.ID, "new-secret").text.startswith("mk_")
    _check(page, "admin-keys")
    _open(page, f"{live_server}/console/admin/categories")
    assert "promotions" in page.find_element(By.TAG_NAME, "table").text
    _check(page, "admin-categories")
    _open(page, f"{live_server}/console/audit")
    _submit(page, "/audit/verify")
    assert "The chain holds" in page.find_element(By.CSS_SELECTOR, "[role=status]").text


def test_each_role_is_refused_the_others_pages_in_html(
    page: Browser,
    live_server: str,
    person: Callable[[str], Person],  # noqa: F811
) -> None:
    refused = {
        "support": ["/console/privacy", "/console/campaigns", "/console/admin/staff"],
        "privacy": ["/console/devices", "/console/insights", "/console/admin/keys"],
        "marketing": ["/console/devices", "/console/privacy", "/console/audit"],
    }
    for role, pages in refused.items():
        page.delete_all_cookies()
        _sign_in(page, live_server, person(role))
        for path in pages:
            _open(page, f"{live_server}{path}")
            assert _heading(page) == "Not for your role", (role, path)
    _check(page, "refused")
    # A mistyped address is a page of the console, with its menu, not a JSON body.
    _open(page, f"{live_server}/console/campains")
    assert _heading(page) == "Page not found"
    assert page.find_element(By.CSS_SELECTOR, "nav[aria-label=Main]").is_displayed()
    page.find_element(By.LINK_TEXT, "Back to the console").click()
    WebDriverWait(page, 10).until(lambda b: _heading(b) == "Campaigns")
    _open(page, f"{live_server}/console/campains")
    _check(page, "not-found")


class _Attacker(BaseHTTPRequestHandler):
    """Another origin serving a form that posts into the console."""

    target = ""

    def do_GET(self) -> None:
        body = (
            "<!doctype html><title>win a prize</title>"
            f'<form method="post" action="{self.target}">'
            '<input name="reason" value="pwned"><button id="go">claim</button></form>'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        """Quiet."""


def test_a_cross_site_form_post_is_refused(
    page: Browser,
    live_server: str,
    app: Flask,  # noqa: F811
    person: Callable[[str], Person],  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
) -> None:
    made = device()
    _sign_in(page, live_server, person("support"))
    handler = type(
        "Attacker", (_Attacker,), {"target": f"{live_server}/console/devices/{made.id}/disable"}
    )
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        # Another port of the same host: the same *site*, so even SameSite=Strict
        # cookies go along; the Origin check and the CSRF token must hold.
        _open(page, f"http://127.0.0.1:{attacker.server_address[1]}/")
        page.find_element(By.ID, "go").click()
        WebDriverWait(page, 10).until(lambda b: b.current_url.startswith(live_server))
        assert _heading(page) == "Cross-site request refused"
    finally:
        attacker.shutdown()
    with app.app_context():
        found = db.session.get(Device, made.id)
        assert found is not None and found.disabled_at is None
        db.session.commit()


def test_a_disabled_staff_members_open_session_stops_working(
    page: Browser,
    live_server: str,
    app: Flask,  # noqa: F811
    person: Callable[[str], Person],  # noqa: F811
) -> None:
    someone = person("support")
    _sign_in(page, live_server, someone)
    assert _heading(page) == "Devices"
    result = app.test_cli_runner().invoke(args=["staff", "disable", someone.email])
    assert result.exit_code == 0
    _open(page, f"{live_server}/console/devices")
    assert _heading(page) == "Sign in"
