"""Celery mode: notifications go through a queue of their own, never behind a campaign's tasks."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from mobile_api import tasks
from tests.campaign_fixtures import (
    Made,
    assert_handed_over,
    create_campaign,
    device,
    fcm,
    fcm_settings,
    kill_hard,
    marketing,
    wait_for,
)
from tests.celery_fixtures import (
    WorkerEnv,
    app,
    queue,
    ready,
    running_worker,
    start_worker,
    waiting_messages,
    worker_env,
)
from tests.fakes.fcm_server import FakeFcmServer
from tests.notification_fixtures import (
    claimed_deliveries,
    notification_body,
    notification_status,
    notify,
    post_notification,
    ticket_reply,
)

__all__ = ["app", "create_campaign", "device", "fcm", "fcm_settings", "marketing", "notify"]
__all__ += ["post_notification", "queue", "ticket_reply", "worker_env"]


def test_a_notification_is_sent_while_a_campaign_waits_in_its_queue(
    app: Flask,
    client: FlaskClient,
    worker_env: WorkerEnv,
    queue: str,
    marketing: dict[str, str],
    notify: dict[str, str],
    create_campaign: Callable[..., str],
    post_notification: Callable[..., Any],
    device: Callable[..., Made],
    fcm: FakeFcmServer,
    tmp_path: Path,
) -> None:
    for _ in range(10):
        device()
    helpdesk_user = device(promotional=False, account_id="acct-1")
    campaign_id = create_campaign()
    assert client.post(f"/v1/campaigns/{campaign_id}/send", headers=marketing).status_code == 202
    accepted = post_notification(notify, notification_body()).get_json()
    notifications = tasks.notification_queue(app)
    assert notifications == f"{queue}.notifications"
    assert waiting_messages(queue) == 1  # the campaign's task
    assert waiting_messages(queue, notifications) == 1  # the notification's, in its own queue

    # A worker of the notification lane only: the campaign's task stays where it is.
    log = tmp_path / "notifications.log"
    with running_worker("n1", worker_env(), notifications, log):
        wait_for(lambda: bool(fcm.received), 60, 0.05)
    assert collections.Counter(m.token for m in fcm.received) == {helpdesk_user.push_token: 1}, (
        log.read_text()
    )
    assert waiting_messages(queue) == 1
    assert notification_status(client, notify, accepted["id"])["status"] == "completed"


def test_a_worker_started_without_queues_sends_notifications_too(
    app: Flask,
    worker_env: WorkerEnv,
    notify: dict[str, str],
    post_notification: Callable[..., Any],
    device: Callable[..., Made],
    fcm: FakeFcmServer,
    tmp_path: Path,
) -> None:
    helpdesk_user = device(promotional=False, account_id="acct-1")
    post_notification(notify, notification_body())
    log = tmp_path / "worker.log"
    with running_worker("all", worker_env(), None, log):
        wait_for(lambda: bool(fcm.received), 60, 0.05)
    assert [m.token for m in fcm.received] == [helpdesk_user.push_token], log.read_text()


def test_a_notification_a_killed_celery_worker_was_handing_over_arrives_after_a_restart(
    app: Flask,
    client: FlaskClient,
    worker_env: WorkerEnv,
    queue: str,
    notify: dict[str, str],
    post_notification: Callable[..., Any],
    device: Callable[..., Made],
    fcm: FakeFcmServer,
    tmp_path: Path,
) -> None:
    """kill -9 while FCM holds the message unanswered; the task comes back to a new worker.

    Scaled as in test_dispatch_celery: a visibility timeout of 2 s and a lease of 1 s
    stand for the defaults of 30 s each.
    """
    tokens = {device(promotional=False, account_id="acct-1").push_token for _ in range(3)}
    fcm.delay = 3.0  # the answer comes long after the kill
    env = worker_env(DISPATCH_CLAIM_LEASE_SECONDS="1", CELERY_VISIBILITY_TIMEOUT="2")
    lane = tasks.notification_queue(app)
    logs = [tmp_path / "doomed.log", tmp_path / "restarted.log"]
    doomed = start_worker("doomed", env, lane, logs[0])
    try:
        assert wait_for(lambda: ready(logs[0]), 60), logs[0].read_text()
        accepted = post_notification(notify, notification_body())
        assert accepted.status_code == 202, accepted.get_json()
        notification_id = accepted.get_json()["id"]
        assert wait_for(lambda: len(fcm.received) >= 1, 30), logs[0].read_text()
    finally:
        kill_hard(doomed)
    assert claimed_deliveries(app) == 3, "killed before or after the hand-off, not during it"
    assert waiting_messages(queue, lane) == 0  # taken, unacknowledged: not lost either
    fcm.delay = 0.0

    with running_worker("restarted", env, lane, logs[1]):
        done = wait_for(
            lambda: notification_status(client, notify, notification_id)["status"] == "completed",
            60,
            0.1,
        )
    assert done, logs[1].read_text()
    # Handed over again by the task Redis gave back (acks_late), same identity.
    assert f"{tasks.SEND_NOTIFICATIONS}[" in logs[1].read_text()
    assert_handed_over(fcm, tokens, in_flight=tokens)
    assert all(m.identity[0] == notification_id for m in fcm.received)
    counts = notification_status(client, notify, notification_id)["counts"]
    assert (counts["sent"], counts["failed"], counts["pending"]) == (3, 0, 0)
