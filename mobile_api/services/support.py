"""Support operations: find devices, disable and re-enable them."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from mobile_api.services import Db, audit, consent, privacy
from mobile_api.services.privacy import subject
from models import ConsentSource, Device, Purpose, utcnow

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
    *,
    reason: str,
    ticket: str | None,
    actor: str,
    request_id: str | None = None,
) -> Device | None:
    """Stop every push to a device until it is enabled; None if unknown."""
    return _set_disabled(session, device_id, reason, ticket, actor=actor, request_id=request_id)


def enable(
    session: Db,
    device_id: str,
    *,
    actor: str,
    request_id: str | None = None,
) -> Device | None:
    """Let pushes reach a disabled device again; None if unknown."""
    return _set_disabled(session, device_id, None, None, actor=actor, request_id=request_id)


def _set_disabled(
    session: Db,
    device_id: str,
    reason: str | None,
    ticket: str | None,
    *,
    actor: str,
    request_id: str | None,
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
        actor=actor,
        action="device.disabled" if disable else "device.enabled",
        target=subject(device.id),
        details=_audit_details(audit_ticket, reason),
        request_id=request_id,
    )
    session.commit()
    return device
