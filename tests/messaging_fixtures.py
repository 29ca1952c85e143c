"""Fixtures of the v1.1 messaging tests: a controllable clock and dispatcher passes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mobile_api.worker import Worker
from models.base import share_clock, travel_to
from tests.fakes.fcm_server import FakeFcmServer, ReceivedMessage

Clock = Callable[[datetime], None]

# A promotional category besides promotions: needs promotional_push and its own opt-in.
DEALS = {
    "name": "Deals",
    "kind": "promotional",
    "android_channel_id": "deals_channel",
    "ios_interruption_level": "time-sensitive",
}


@pytest.fixture
def clock() -> Iterator[Clock]:
    """Set the service's clock (it runs on from there); real time again afterwards."""
    yield travel_to
    travel_to(None)


class SharedClock:
    """The service's clock here and in the processes started with TEST_CLOCK_FILE=path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, moment: datetime) -> None:
        """Set the clock (it runs on from there) in this process and in theirs."""
        travel_to(moment)
        share_clock(self.path)


@pytest.fixture
def shared_clock(tmp_path: Path) -> Iterator[SharedClock]:
    """A clock this test moves for its worker processes too; real time again afterwards."""
    shared = SharedClock(tmp_path / "clock")
    share_clock(shared.path)
    yield shared
    travel_to(None)


def run_passes(app: Flask, passes: int = 3) -> None:
    """Let the embedded dispatcher do whatever is due now (no waiting for later work)."""
    worker = Worker(app)
    for _ in range(passes):
        worker.run_pass()


def race(*targets: Callable[[], None]) -> None:
    """Run the callables in threads at once; re-raise the first error any of them hit."""
    errors: list[BaseException] = []

    def run(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # pragma: no cover - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def received(fcm: FakeFcmServer, token: str) -> list[ReceivedMessage]:
    """What the loopback FCM server got for a token."""
    return fcm.messages_for(token)


def put_category(client: FlaskClient, headers: dict[str, str], key: str, **body: Any) -> None:
    """Create or update a category as an admin."""
    response = client.put(f"/v1/admin/categories/{key}", json=body, headers=headers)
    assert response.status_code in (200, 201), response.get_json()
