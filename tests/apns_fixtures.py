"""Fixtures for APNs tests: loopback APNs hosts (production and sandbox) over TLS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.campaign_fixtures import Made
from tests.fakes.apns_server import FakeApnsServer, apns_token


@pytest.fixture
def apns(tmp_path: Path) -> Iterator[FakeApnsServer]:
    """The loopback APNs production host; retryable answers ask to retry after 0 s."""
    with FakeApnsServer(tmp_path / "apns") as server:
        server.retry_after = "0"
        yield server


@pytest.fixture
def apns_sandbox(apns: FakeApnsServer, tmp_path: Path) -> Iterator[FakeApnsServer]:
    """The loopback APNs sandbox host: the same key and CA, another server."""
    with FakeApnsServer(tmp_path / "apns-sandbox", like=apns) as server:
        server.retry_after = "0"
        yield server


@pytest.fixture
def apns_settings(apns: FakeApnsServer, apns_sandbox: FakeApnsServer) -> dict[str, Any]:
    """Config for the real APNs transport: the fakes' key, CA and endpoints."""
    return {**apns.settings(), "APNS_SANDBOX_ENDPOINT": apns_sandbox.url}


@pytest.fixture
def ios_device(device: Callable[..., Made]) -> Callable[..., Made]:
    """Register an iOS device with an APNs token (production unless told; opted in unless told)."""

    def make(provider: str = "apns", prefix: str = "", **overrides: Any) -> Made:
        overrides.setdefault("push_token", apns_token(prefix))
        return device(platform="ios", os_version="17.4", push_provider=provider, **overrides)

    return make
