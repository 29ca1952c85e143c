"""/docs: Swagger UI from the app's own pinned assets, working under a strict CSP."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from flask.testing import FlaskClient
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from mobile_api import docs
from tests.browser import console

VENDORED = Path(docs.__file__).parent / "static" / "swagger-ui"
REGISTER_SUMMARY = "Register this installation and receive its device token."


def test_docs_page_loads_only_its_own_pinned_assets(client: FlaskClient) -> None:
    response = client.get("/docs")

    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp
    assert "unsafe" not in csp
    html = response.get_data(as_text=True)
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.DOTALL)
    assert scripts
    assert all('src="/static/' in attributes and not body.strip() for attributes, body in scripts)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert all(asset.startswith("/static/") for asset in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


def test_vendored_assets_are_the_pinned_release() -> None:
    recorded = (VENDORED / "VERSION").read_text(encoding="utf-8")
    assert "swagger-ui-dist 5.35.0" in recorded
    sums = re.findall(r"^([0-9a-f]{64})  (\S+)$", recorded, re.MULTILINE)
    assert {name for _, name in sums} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    for digest, name in sums:
        assert hashlib.sha256((VENDORED / name).read_bytes()).hexdigest() == digest, name
    assert (VENDORED / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")


def test_docs_render_in_headless_chromium(
    browser: webdriver.Chrome, live_server: str, tmp_path: Path
) -> None:
    console(browser)  # what earlier pages logged
    browser.get(f"{live_server}/docs")

    operation = WebDriverWait(browser, 30).until(
        expected_conditions.visibility_of_element_located(
            (
                By.XPATH,
                f"//*[contains(@class, 'opblock-summary')][contains(., '{REGISTER_SUMMARY}')]",
            )
        )
    )
    operation.click()  # opened: parameters, schemas and highlighted examples render too
    WebDriverWait(browser, 10).until(
        expected_conditions.visibility_of_element_located((By.CLASS_NAME, "try-out__btn"))
    )
    browser.save_screenshot(str(tmp_path / "docs.png"))
    logged = console(browser)
    assert not [e for e in logged if "Content Security Policy" in e["message"]], logged
    assert not [e for e in logged if e["level"] == "SEVERE"], logged
