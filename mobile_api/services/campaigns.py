"""Campaigns: create, preview, send, cancel, counts, deliveries and explain."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from mobile_api.errors import (
    CampaignAlreadySent,
    CampaignFinished,
    NotFound,
    ServiceCampaignRequiresAdmin,
)
from mobile_api.push import INVALID_TOKEN_ERRORS
from mobile_api.services import Db, audit, export
from mobile_api.services import audience as aud
from mobile_api.services.caller import Caller
from models import (
    FINAL_STATUSES,
    Campaign,
    CampaignCategory,
    CampaignStatus,
    Delivery,
    DeliveryStatus,
    Device,
    utcnow,
)

log = logging.getLogger(__name__)


@export.device_section("deliveries")
def _export_deliveries(session: Db, device: Device) -> list[dict[str, Any]]:
    """Every campaign delivery row kept for the device, oldest first."""
    rows = session.scalars(
        sa.select(Delivery).where(Delivery.device_id == device.id).order_by(Delivery.id)
    )
    return [
        {
            "campaign_id": row.campaign_id,
            "status": row.status,
            "reason": row.reason,
            "attempts": row.attempts,
            "updated_at": export.to_json(row.updated_at),
        }
        for row in rows
    ]


def _require_role(campaign_category: str, caller: Caller) -> None:
    if campaign_category == CampaignCategory.SERVICE and not caller.is_admin:
        raise ServiceCampaignRequiresAdmin()


def create(
    session: Db,
    data: Mapping[str, Any],
    caller: Caller,
) -> Campaign:
    """Create a draft campaign; service campaigns need an admin."""
    _require_role(data["category"], caller)
    campaign = Campaign(
        name=data["name"],
        category=data["category"],
        title=data["title"],
        body=data["body"],
        data=dict(data.get("data") or {}),
        audience=dict(data.get("audience") or {}),
        ttl_seconds=data.get("ttl_seconds"),
        collapse_key=data.get("collapse_key"),
        priority=data.get("priority") or "normal",
        status=CampaignStatus.DRAFT,
        created_by=caller.actor,
    )
    session.add(campaign)
    session.flush()
    audit.record(
        session,
        caller,
        action="campaign.create",
        target=campaign.id,
        details={"category": campaign.category},
    )
    session.commit()
    return campaign


def get(session: Db, campaign_id: str) -> Campaign:
    """The campaign, or 404."""
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound()
    return campaign


def preview(session: Db, campaign: Campaign) -> dict[str, Any]:
    """Eligible devices and exclusions by reason, as of now; one aggregate query."""
    reason = aud.exclusion_reason(campaign.category).label("reason")
    stmt = aud.with_terminations(sa.select(reason, sa.func.count().label("n")).select_from(Device))
    stmt = stmt.where(aud.matches(campaign.audience, utcnow())).group_by(reason)
    counts = {row.reason: row.n for row in session.execute(stmt)}
    session.rollback()  # release the read snapshot (and SQLite's read lock)
    excluded = {name: counts.get(name, 0) for name in aud.EXCLUSION_REASONS}
    return {"eligible": counts.get(None, 0), "excluded": excluded}


def send(session: Db, campaign_id: str, caller: Caller) -> Campaign:
    """Queue a draft for the dispatcher; a second send is refused (409)."""
    campaign = get(session, campaign_id)
    _require_role(campaign.category, caller)
    now = utcnow()
    # Compare-and-set on the status: of two concurrent sends exactly one wins.
    result = session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.DRAFT)
        .values(status=CampaignStatus.QUEUED, queued_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise CampaignAlreadySent()
    audit.record(
        session,
        caller,
        action="campaign.send",
        target=campaign_id,
        details={"category": campaign.category},
    )
    session.commit()
    session.refresh(campaign)
    return campaign


def cancel(session: Db, campaign_id: str, caller: Caller) -> Campaign:
    """Stop a campaign: every delivery not yet handed to FCM is suppressed as cancelled."""
    campaign = get(session, campaign_id)
    _require_role(campaign.category, caller)
    if campaign.status == CampaignStatus.CANCELLED:
        return campaign  # cancelling twice is harmless
    now = utcnow()
    result = session.execute(
        sa.update(Campaign)
        .where(
            Campaign.id == campaign_id,
            Campaign.status.in_(
                [CampaignStatus.DRAFT, CampaignStatus.QUEUED, CampaignStatus.SENDING]
            ),
        )
        .values(status=CampaignStatus.CANCELLED, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise CampaignFinished()
    # Rows a dispatcher has already claimed (`sending`) are being handed over
    # right now; their worker records their fate.
    session.execute(
        sa.update(Delivery)
        .where(Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.PENDING)
        .values(status=DeliveryStatus.SUPPRESSED, reason="cancelled", updated_at=now)
        .execution_options(synchronize_session=False)
    )
    # With a chunk in flight, the dispatcher that records it stores the counts.
    store_final_counts(session, campaign_id)
    audit.record(
        session,
        caller,
        action="campaign.cancel",
        target=campaign_id,
        details={},
    )
    session.commit()
    session.refresh(campaign)
    return campaign


def counts(session: Db, campaign: Campaign) -> dict[str, Any]:
    """targeted, sent, failed, suppressed by reason, pending, invalid_tokens_pruned.

    Once final, from the totals stored on the campaign: delivery rows are deleted
    after DELIVERY_RETENTION_DAYS. Until then, counted from the rows.
    """
    if campaign.final_sent is not None:
        return {
            "targeted": campaign.targeted,
            "sent": campaign.final_sent,
            "failed": campaign.final_failed or 0,
            "pending": 0,
            "invalid_tokens_pruned": campaign.final_invalid_tokens_pruned or 0,
            "suppressed": dict(campaign.final_suppressed or {}),
        }
    return {"targeted": campaign.targeted, **_tally(session, campaign.id)}


def _tally(session: Db, campaign_id: str) -> dict[str, Any]:
    """The counts of a campaign's delivery rows, in one GROUP BY."""
    stmt = (
        sa.select(Delivery.status, Delivery.reason, sa.func.count().label("n"))
        .where(Delivery.campaign_id == campaign_id)
        .group_by(Delivery.status, Delivery.reason)
    )
    totals: dict[str, Any] = {"sent": 0, "failed": 0, "pending": 0, "invalid_tokens_pruned": 0}
    suppressed: dict[str, int] = {}
    for status, reason, n in session.execute(stmt):
        if status == DeliveryStatus.SUPPRESSED:
            suppressed[reason] = suppressed.get(reason, 0) + n
        elif status in (DeliveryStatus.PENDING, DeliveryStatus.SENDING):
            totals["pending"] += n
        else:
            totals[status] += n
            if status == DeliveryStatus.FAILED and reason in INVALID_TOKEN_ERRORS:
                totals["invalid_tokens_pruned"] += n
    totals["suppressed"] = suppressed
    return totals


def store_final_counts(session: Db, campaign_id: str) -> bool:
    """Keep the counts on a completed or cancelled campaign once no delivery is undecided.

    Runs in the caller's transaction (the caller commits); False when the campaign
    is not final, still has deliveries pending or being handed over, or has its
    counts already. Decided rows never change again, so the totals stay true after
    retention deletes the rows (and after an erasure, which only unlinks them).
    """
    undecided = (
        sa.select(Delivery.id)
        .where(
            Delivery.campaign_id == campaign_id,
            Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.SENDING]),
        )
        .exists()
    )
    # Compare-and-set first: it takes the campaign row (SQLite: the write lock)
    # before the rows are counted, and only one caller stores the counts.
    claimed = session.execute(
        sa.update(Campaign)
        .where(
            Campaign.id == campaign_id,
            Campaign.status.in_(FINAL_STATUSES),
            Campaign.final_sent.is_(None),
            ~undecided,
        )
        .values(final_sent=0)
        .execution_options(synchronize_session=False)
    )
    if not claimed.rowcount:  # type: ignore[attr-defined]
        return False
    tally = _tally(session, campaign_id)
    session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(
            final_sent=tally["sent"],
            final_failed=tally["failed"],
            final_invalid_tokens_pruned=tally["invalid_tokens_pruned"],
            final_suppressed=tally["suppressed"],
        )
        .execution_options(synchronize_session=False)
    )
    return True


def store_all_final_counts(session: Db) -> int:
    """Store the counts of every final campaign still without them (before retention runs)."""
    ids = session.scalars(
        sa.select(Campaign.id).where(
            Campaign.status.in_(FINAL_STATUSES), Campaign.final_sent.is_(None)
        )
    ).all()
    session.commit()
    stored = 0
    for campaign_id in ids:
        stored += store_final_counts(session, campaign_id)
        session.commit()
    return stored


def deliveries_query(campaign_id: str, status: str | None) -> sa.Select[tuple[Delivery]]:
    """Per-device rows of a campaign (keyset-paginated on id), optionally by status."""
    stmt = sa.select(Delivery).where(Delivery.campaign_id == campaign_id)
    if status == DeliveryStatus.PENDING:
        stmt = stmt.where(Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.SENDING]))
    elif status is not None:
        stmt = stmt.where(Delivery.status == status)
    return stmt


_EXPLANATIONS = {
    "sent": "Handed to FCM, which accepted it.",
    "failed": "FCM refused it ({reason}).",
    "suppressed": "Not sent: {reason}.",
    "pending": "Not decided yet: waiting for the dispatcher.",
    "sending": "Being handed to FCM right now.",
}


def explain(session: Db, campaign: Campaign, device_id: str) -> dict[str, Any]:
    """Why this device did or did not get the campaign."""
    delivery = session.scalars(
        sa.select(Delivery).where(
            Delivery.campaign_id == campaign.id, Delivery.device_id == device_id
        )
    ).first()
    as_of = campaign.started_at or utcnow()
    conditions = aud.filters(campaign.audience, as_of)
    columns = [condition.label(name) for name, condition in conditions.items()]
    stmt = aud.with_terminations(
        sa.select(aud.exclusion_reason(campaign.category).label("reason"), *columns)
        .select_from(Device)
        .where(Device.id == device_id)
    )
    row = session.execute(stmt).first()
    if row is None and delivery is None:
        raise NotFound()
    unmatched = [name for name in conditions if row is not None and not getattr(row, name)]
    now_reason = row.reason if row is not None else aud.ERASED
    if delivery is not None:
        status = delivery.status
        explanation = _EXPLANATIONS[status].format(reason=delivery.reason)
    elif campaign.status == CampaignStatus.DRAFT:
        status = None
        explanation = "The campaign has not been sent yet."
    else:
        status = None
        explanation = (
            "Not targeted: it did not match the audience filters "
            + (", ".join(unmatched) if unmatched else "when the audience was selected")
            + "."
        )
    return {
        "device_id": device_id,
        "campaign_id": campaign.id,
        "campaign_status": campaign.status,
        "targeted": delivery is not None,
        "delivery": delivery,
        "matches_audience_now": row is not None and not unmatched,
        "unmatched_filters": unmatched,
        "deliverable_now": now_reason is None,
        "exclusion_now": now_reason,
        "status": status,
        "explanation": explanation,
    }
