"""A breaker that trips while another dispatcher claims the rows it holds: PostgreSQL's row
locks, so this module runs on PostgreSQL in both CI runs (SQLite has no row locks).

A claim locks its delivery rows, then takes the breaker's probe (`breaker.admit`). A trip
changes the breaker row, then re-times the held rows (`breaker.update`). Were both in one
transaction each, the two would wait on each other until PostgreSQL aborted one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.test import TestResponse

from mobile_api.extensions import db
from mobile_api.push import Outcome, SendResult
from mobile_api.services.dispatch import Settings, breaker
from models import DeliveryStatus, Device, NotificationDelivery, PushBreaker, utcnow
from tests.campaign_fixtures import Made, device
from tests.notification_fixtures import (
    notification_body,
    notify,
    post_notification,
    ticket_reply,
)

__all__ = ["device", "notify", "post_notification", "ticket_reply"]

pytestmark = pytest.mark.postgres

TABLE: sa.Table = NotificationDelivery.__table__  # type: ignore[assignment]


@pytest.fixture(scope="session")
def database_url(postgres_url: str) -> str:
    """This module's tests run on the scratch PostgreSQL database, whatever the suite's."""
    return postgres_url


def _held_notification(
    app: Flask, post: Callable[..., TestResponse], headers: Any, to: Made
) -> int:
    """A notification delivery held by fcm's breaker, now half-open (its wait is over)."""
    response = post(headers, notification_body(device_ids=[to.id]))
    assert response.status_code == 202, response.get_json()
    past = utcnow() - timedelta(seconds=1)
    with app.app_context():
        delivery_id = db.session.scalars(sa.select(NotificationDelivery.id)).one()
        db.session.execute(
            sa.update(NotificationDelivery)
            .where(NotificationDelivery.id == delivery_id)
            .values(reason=breaker.HELD, next_attempt_at=past)
        )
        db.session.add(PushBreaker(provider="fcm", trips=1, open_until=past))
        db.session.commit()
        db.session.remove()
    return delivery_id


def test_a_trip_while_another_dispatcher_claims_the_held_rows_does_not_deadlock(
    app: Flask,
    device: Callable[..., Made],
    notify: dict[str, str],
    post_notification: Callable[..., TestResponse],
) -> None:
    delivery_id = _held_notification(app, post_notification, notify, device(promotional=False))
    settings = Settings(retry_base_seconds=5.0, breaker_max_seconds=10.0)
    outage = SendResult(Outcome.RETRY, error="unavailable")
    failures: list[BaseException] = []

    def trip() -> None:
        # A hand-off that went out before the trip comes back failing: it trips the breaker.
        try:
            with app.app_context():
                row = type("Row", (), {"id": 0, "push_provider": "fcm"})()
                breaker.update(db.session, breaker.Gate(), [row], [outage], settings)
                db.session.remove()
        except BaseException as exc:
            failures.append(exc)

    with app.app_context():
        # The claim: the held row is locked first, as the dispatcher's claim query does.
        claimed = db.session.execute(
            sa.select(TABLE.c.id, Device.push_provider)
            .join(Device, Device.id == TABLE.c.device_id)
            .where(TABLE.c.id == delivery_id)
            .with_for_update(of=TABLE)
        ).all()
        tripping = threading.Thread(target=trip)
        tripping.start()
        tripping.join(3)  # done, or waiting for the row this claim holds
        admitted, gate = breaker.admit(db.session, TABLE, claimed, utcnow(), settings)
        db.session.commit()
        tripping.join(10)
        assert not tripping.is_alive()
        assert not failures, failures
        # The trip won: no probe for the claim, which holds its row until the new wait ends.
        assert admitted == [] and gate.probing == frozenset()
        state = db.session.get(PushBreaker, "fcm")
        assert state is not None and state.trips == 2
        assert state.open_until is not None and state.open_until > utcnow()
        row = db.session.get(NotificationDelivery, delivery_id)
        assert row is not None and row.status == DeliveryStatus.PENDING
        assert row.reason == breaker.HELD and row.next_attempt_at == state.open_until
        db.session.remove()
