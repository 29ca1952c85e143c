"""Support operations: find devices, disable and re-enable them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from mobile_api.push import mask_token
from mobile_api.services import Db, audit, consent, privacy
from mobile_api.services.caller import Caller
from mobile_api.services.privacy import subject
from models import (
    Campaign,
    ConsentRecord,
    ConsentSource,
    Delivery,
    Device,
    Notification,
    NotificationDelivery,
    Purpose,
    utcnow,
)

log = logging.getLogger(__name__)


def search_query(
    *,
    installation_id: str | None = None,
    account_id: str | None = None,
    platform: str | None = None,
) -> sa.Select[tuple[Device]]:
    """Devices matching every given filter (the caller paginates)."""
    stmt = sa.select(Device)
    if installation_id is not None:
        stmt = stmt.where(Device.installation_id == installation_id)
    if account_id is not None:
        stmt = stmt.where(Device.account_id == account_id)
    if platform is not None:
        stmt = stmt.where(Device.platform == platform)
    return stmt


def masked_push_token(device: Device) -> str | None:
    """The device's push token as staff may see it: never whole, the same tail the logs show."""
    return mask_token(device.push_token) if device.push_token else None


def _record_delivery(session: Db, device: Device, granted: bool) -> None:
    """Ledger entry for a change of deliverability (none while the account is terminated)."""
    if privacy.is_terminated(session, device.account_id):
        return
    consent.record(session, device.id, Purpose.PUSH_DELIVERY, granted, ConsentSource.SUPPORT)


def _audit_details(ticket: str | None, reason: str | None = None) -> dict[str, object]:
    # The reason is staff-written free text that may quote the user: it stays on
    # the device row (erased with it); the trail keeps only the ticket reference.
    details: dict[str, object] = {"ticket": ticket}
    if reason is not None:
        details["reason_length"] = len(reason)
    return details


def disable(
    session: Db,
    device_id: str,
    caller: Caller,
    *,
    reason: str,
    ticket: str | None,
) -> Device | None:
    """Stop every push to a device until it is enabled; None if unknown."""
    return _set_disabled(session, device_id, reason, ticket, caller)


def enable(
    session: Db,
    device_id: str,
    caller: Caller,
) -> Device | None:
    """Let pushes reach a disabled device again; None if unknown."""
    return _set_disabled(session, device_id, None, None, caller)


def _set_disabled(
    session: Db,
    device_id: str,
    reason: str | None,
    ticket: str | None,
    caller: Caller,
) -> Device | None:
    """Disable (with a reason) or enable (reason None); recorded in the ledger and the trail."""
    disable = reason is not None
    device = session.get(Device, device_id, with_for_update=True)
    if device is None:
        session.rollback()
        return None
    if (device.disabled_at is None) == disable:
        device.disabled_at = utcnow() if disable else None
        _record_delivery(session, device, granted=not disable)
    # Enabling names the ticket the device was disabled under.
    audit_ticket = ticket if disable else device.disabled_ticket
    device.disabled_reason = reason
    device.disabled_ticket = ticket
    audit.record(
        session,
        caller,
        action="device.disabled" if disable else "device.enabled",
        target=subject(device.id),
        details=_audit_details(audit_ticket, reason),
    )
    session.commit()
    return device


@dataclass(frozen=True, slots=True)
class RecentDelivery:
    """One campaign's outcome for a device, for the support view."""

    campaign_id: str
    campaign_name: str
    status: str
    reason: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RecentNotification:
    """One notification's outcome for a device, for the support view."""

    notification_id: str
    category_key: str
    title: str
    status: str
    reason: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime


def recent_notifications(session: Db, device_id: str, limit: int = 20) -> list[RecentNotification]:
    """The device's latest notifications (sent to it, or to its account) and their outcome."""
    rows = session.execute(
        sa.select(NotificationDelivery, Notification)
        .join(Notification, Notification.id == NotificationDelivery.notification_id)
        .where(NotificationDelivery.device_id == device_id)
        .order_by(NotificationDelivery.id.desc())
        .limit(limit)
    ).all()
    return [
        RecentNotification(
            n.id,
            n.category_key,
            n.title,
            d.status,
            d.reason,
            d.attempts,
            n.created_at,
            d.updated_at,
        )
        for d, n in rows
    ]


def consent_timeline(session: Db, device_id: str) -> Sequence[ConsentRecord]:
    """The device's consent records, oldest first."""
    return session.scalars(
        sa.select(ConsentRecord)
        .where(ConsentRecord.device_id == device_id)
        .order_by(ConsentRecord.id)
    ).all()


def recent_deliveries(session: Db, device_id: str, limit: int = 20) -> list[RecentDelivery]:
    """The device's latest campaign outcomes, newest first."""
    rows = session.execute(
        sa.select(Delivery, Campaign.name)
        .join(Campaign, Campaign.id == Delivery.campaign_id)
        .where(Delivery.device_id == device_id)
        .order_by(Delivery.id.desc())
        .limit(limit)
    ).all()
    return [
        RecentDelivery(d.campaign_id, name, d.status, d.reason, d.updated_at) for d, name in rows
    ]
