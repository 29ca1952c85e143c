"""Campaigns: create, preview, send, cancel, counts, deliveries and explain."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.sql.expression import ColumnElement

from mobile_api.errors import (
    CampaignAlreadySent,
    CampaignFinished,
    CampaignScheduledFieldFixed,
    CategoryMismatch,
    CategoryNotAllowed,
    NotFound,
    ServiceCampaignRequiresAdmin,
)
from mobile_api.push import INVALID_TOKEN_ERRORS
from mobile_api.services import Db, audit, categories, delivery_counts, erasure, export, messaging
from mobile_api.services import audience as aud
from mobile_api.services.caller import Caller
from mobile_api.services.messaging import FREQUENCY_CAPPED
from models import (
    FINAL_STATUSES,
    Campaign,
    CampaignCategory,
    CampaignStatus,
    Category,
    CategoryKind,
    Delivery,
    DeliveryStatus,
    Device,
    utcnow,
)
from models.base import UTCDateTime

log = logging.getLogger(__name__)


@export.device_section("deliveries")
def _export_deliveries(session: Db, device: Device) -> list[dict[str, Any]]:
    """Every campaign delivery row kept for the device, oldest first."""
    rows = session.scalars(
        sa.select(Delivery).where(Delivery.device_id == device.id).order_by(Delivery.id)
    )
    return export.items(rows, "campaign_deliveries", "deliveries")


@erasure.scrubber("campaigns", "audience")
def _scrub_audiences(
    session: Db,
    device_ids: Sequence[str],
    account_ids: Sequence[str],
    hash_id: Callable[[str], str],
) -> None:
    """Replace erased ids in audiences by their keyed hashes, which match no device.

    Dropping them instead could empty a list, and an empty list means no filter at all.
    """
    erased = dict.fromkeys(device_ids, "device_ids") | dict.fromkeys(account_ids, "account_ids")
    if not erased:
        return
    text = sa.cast(Campaign.audience, sa.Text)
    mentions = sa.or_(*(text.contains(f'"{identifier}"') for identifier in erased))
    for campaign in session.scalars(sa.select(Campaign).where(mentions)):
        audience = dict(campaign.audience)
        for key in ("device_ids", "account_ids"):
            if audience.get(key):
                audience[key] = [
                    f"erased:{hash_id(v)}" if erased.get(v) == key else v for v in audience[key]
                ]
        campaign.audience = audience
    session.flush()


def _require_role(campaign_category: str, caller: Caller) -> None:
    if campaign_category == CampaignCategory.SERVICE and not caller.is_admin:
        raise ServiceCampaignRequiresAdmin()


# Fields a PATCH may change, besides the category (its own rules) and the schedule.
_EDITABLE = (
    "name",
    "title",
    "body",
    "data",
    "audience",
    "ttl_seconds",
    "collapse_key",
    "priority",
    "content",
    "default_locale",
    "image_url",
    "link",
    "sound",
    "badge",
    "send_at",
    "local_time",
    "fallback_timezone",
)
# Once scheduled, the audience (targeted is fixed then) and the category stay.
_FIXED_ONCE_SCHEDULED = ("audience", "category", "category_key")
PROMOTIONAL_DEFAULT_TTL = 86400


def _category(session: Db, data: Mapping[str, Any], current: Campaign | None) -> Category:
    """The campaign's category: `category_key`, else the built-in of v1's `category`."""
    key = data.get("category_key")
    kind = data.get("category")
    if key is None:
        if kind is None:
            assert current is not None  # create requires one of them (schema)
            key = current.category_key
        else:
            key = aud.V1_RULES[kind].key
    category = categories.get(session, key)
    if category.kind == CategoryKind.TRANSACTIONAL:
        raise CategoryNotAllowed()
    if kind is not None and kind != category.kind:
        raise CategoryMismatch()
    return category


def _apply(campaign: Campaign, data: Mapping[str, Any], category: Category) -> None:
    """Set the given fields on the campaign, with the v1.1 defaults and derivations."""
    for field in _EDITABLE:
        if field in data:
            value = data[field]
            setattr(campaign, field, dict(value) if isinstance(value, Mapping) else value)
    campaign.category = category.kind
    campaign.category_key = category.key
    campaign.data = dict(campaign.data or {})
    if campaign.link:
        campaign.data["link"] = campaign.link  # apps that read only data find it too
    if campaign.fallback_timezone is None:
        campaign.fallback_timezone = "UTC"
    # Promotions default to a one-day TTL (API.md v1.1): a week-old offer must not
    # reach an offline device that opted out meanwhile.
    if campaign.ttl_seconds is None and category.kind == CategoryKind.PROMOTIONAL:
        campaign.ttl_seconds = PROMOTIONAL_DEFAULT_TTL


def create(
    session: Db,
    data: Mapping[str, Any],
    caller: Caller,
) -> Campaign:
    """Create a draft campaign; service campaigns need an admin."""
    category = _category(session, data, None)
    _require_role(category.kind, caller)
    campaign = Campaign(
        name=data["name"],
        title=data["title"],
        body=data["body"],
        data={},
        audience={},
        priority="normal",
        status=CampaignStatus.DRAFT,
        created_by=caller.actor,
    )
    _apply(campaign, {**data, "priority": data.get("priority") or "normal"}, category)
    session.add(campaign)
    session.flush()
    audit.record(
        session,
        caller,
        action="campaign.create",
        target=campaign.id,
        details={"category": campaign.category, "category_key": campaign.category_key},
    )
    session.commit()
    return campaign


def update(session: Db, campaign_id: str, data: Mapping[str, Any], caller: Caller) -> Campaign:
    """Edit a draft or scheduled campaign; 409 campaign_already_sent once sending began.

    A scheduled campaign keeps its audience and category (targeted was fixed when it
    was sent); a new schedule re-plans its deliveries still waiting.
    """
    campaign = session.get(Campaign, campaign_id, with_for_update=True, populate_existing=True)
    if campaign is None:
        session.rollback()
        raise NotFound("No such campaign.")
    _require_role(campaign.category, caller)
    if campaign.status not in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
        session.rollback()
        raise CampaignAlreadySent("This campaign has started sending; it can no longer be edited.")
    scheduled = campaign.status == CampaignStatus.SCHEDULED
    if scheduled and any(field in data for field in _FIXED_ONCE_SCHEDULED):
        session.rollback()
        raise CampaignScheduledFieldFixed()
    category = _category(session, data, campaign)
    _require_role(category.kind, caller)
    _apply(campaign, data, category)
    if scheduled and {"send_at", "local_time", "fallback_timezone"} & data.keys():
        _replan(session, campaign, utcnow())
    audit.record(
        session,
        caller,
        action="campaign.update",
        target=campaign.id,
        details={"fields": sorted(data)},
    )
    session.commit()
    return campaign


def _replan(session: Db, campaign: Campaign, now: datetime) -> None:
    """Give a scheduled campaign's waiting deliveries their due time under the new schedule."""
    sent_at = campaign.queued_at or now
    not_before = max(campaign.send_at or sent_at, sent_at)
    table = cast(sa.Table, Delivery.__table__)
    waiting = sa.and_(table.c.campaign_id == campaign.id, table.c.status == DeliveryStatus.PENDING)
    if campaign.local_time is None:
        due: Any = sa.literal(not_before, UTCDateTime())
    else:
        zone_of = (
            sa.select(sa.func.coalesce(Device.timezone, campaign.fallback_timezone))
            .where(Device.id == table.c.device_id)
            .scalar_subquery()
        )
        names = session.scalars(
            sa.select(sa.distinct(Device.timezone))
            .join(table, table.c.device_id == Device.id)
            .where(waiting)
        ).all()
        waves = {
            name: sa.literal(
                messaging.local_time_due(campaign.local_time, not_before, name), UTCDateTime()
            )
            for name in {*(n for n in names if n), campaign.fallback_timezone}
        }
        # An erased device's row (device_id NULL) gets the fallback's wave: it is
        # suppressed `erased` when that comes.
        due = sa.case(waves, value=zone_of, else_=waves[campaign.fallback_timezone])
    session.execute(sa.update(table).where(waiting).values(due_at=due, next_attempt_at=due))


def get(session: Db, campaign_id: str) -> Campaign:
    """The campaign, or 404."""
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound("No such campaign.")
    return campaign


def capped_devices(caps: Sequence[messaging.Cap], now: datetime) -> sa.Select[Any] | None:
    """Devices that have reached a frequency cap as of `now` (None without caps)."""
    at = aud.hand_off_time()
    selects = [
        sa.select(Delivery.device_id)
        .join(Campaign, Campaign.id == Delivery.campaign_id)
        .where(
            at > now - cap.window,
            Delivery.device_id.is_not(None),
            Campaign.category == CampaignCategory.PROMOTIONAL,
        )
        .group_by(Delivery.device_id)
        .having(sa.func.count() >= cap.limit)
        for cap in caps
    ]
    if not selects:
        return None
    return selects[0] if len(selects) == 1 else sa.union(*selects)  # type: ignore[return-value]


def _reason_now(
    session: Db, campaign: Campaign, caps: Sequence[messaging.Cap], now: datetime
) -> ColumnElement[str | None]:
    """Why a device would not get this campaign now: consent, deliverability, then caps."""
    category = session.get(Category, campaign.category_key)
    rule = categories.rule(category) if category is not None else campaign.category
    extra = []
    capped = (
        capped_devices(caps, now) if campaign.category == CampaignCategory.PROMOTIONAL else None
    )
    if capped is not None:
        extra.append((Device.id.in_(capped), FREQUENCY_CAPPED))
    return aud.exclusion_reason(rule, extra=extra)


def preview(session: Db, campaign: Campaign, caps: Sequence[messaging.Cap] = ()) -> dict[str, Any]:
    """Eligible devices, exclusions by reason and eligible devices per language, as of now."""
    now = utcnow()
    reason = _reason_now(session, campaign, caps, now).label("reason")
    stmt = aud.with_terminations(
        sa.select(reason, Device.locale, sa.func.count().label("n")).select_from(Device)
    )
    stmt = stmt.where(aud.matches(campaign.audience, now)).group_by(reason, Device.locale)
    counts: dict[str | None, int] = {}
    languages: dict[str, int] = {}
    fallback = campaign.default_locale or messaging.FALLBACK
    for row in session.execute(stmt):
        counts[row.reason] = counts.get(row.reason, 0) + row.n
        if row.reason is None:
            language = messaging.content_key(campaign.content, row.locale) or fallback
            languages[language] = languages.get(language, 0) + row.n
    session.rollback()  # release the read snapshot (and SQLite's read lock)
    excluded = {name: counts.get(name, 0) for name in (*aud.EXCLUSION_REASONS, FREQUENCY_CAPPED)}
    return {"eligible": counts.get(None, 0), "excluded": excluded, "languages": languages}


def preview_unsaved(
    session: Db, data: Mapping[str, Any], caps: Sequence[messaging.Cap] = ()
) -> dict[str, Any]:
    """The preview of a campaign not created yet, from create's fields (the console's composer)."""
    campaign = Campaign(data={}, audience={}, priority="normal")
    _apply(campaign, data, _category(session, data, None))
    return preview(session, campaign, caps)


def list_query(status: str | None) -> sa.Select[tuple[Campaign]]:
    """Campaigns, optionally of one status (the caller paginates, newest first)."""
    stmt = sa.select(Campaign)
    if status is not None:
        stmt = stmt.where(Campaign.status == status)
    return stmt


def send(session: Db, campaign_id: str, caller: Caller) -> Campaign:
    """Queue a draft for the dispatcher; a second send is refused (409)."""
    campaign = get(session, campaign_id)
    _require_role(campaign.category, caller)
    now = utcnow()
    # A future send_at or a local time: scheduled. The audience is enumerated at
    # once either way (targeted is fixed now); deliveries wait for their due time.
    later = campaign.local_time is not None or (
        campaign.send_at is not None and campaign.send_at > now
    )
    # Compare-and-set on the status: of two concurrent sends exactly one wins.
    result = session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.DRAFT)
        .values(
            status=CampaignStatus.SCHEDULED if later else CampaignStatus.QUEUED,
            queued_at=now,
        )
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
                [
                    CampaignStatus.DRAFT,
                    CampaignStatus.SCHEDULED,
                    CampaignStatus.QUEUED,
                    CampaignStatus.SENDING,
                ]
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
    cancelled = session.execute(
        sa.update(Delivery)
        .where(Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.PENDING)
        .values(status=DeliveryStatus.SUPPRESSED, reason="cancelled", updated_at=now)
        .execution_options(synchronize_session=False)
    )
    n = int(cancelled.rowcount)  # type: ignore[attr-defined]
    outcome: dict[tuple[str, str | None], int] = {(DeliveryStatus.SUPPRESSED, "cancelled"): n}
    delivery_counts.add(session, delivery_counts.decided(campaign_id, outcome))
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
    after DELIVERY_RETENTION_DAYS. Until then, from the counts the dispatcher keeps
    as it decides the rows (services/delivery_counts.py).
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
    """The counts of a campaign's delivery rows, as kept beside them."""
    totals: dict[str, Any] = {"sent": 0, "failed": 0, "pending": 0, "invalid_tokens_pruned": 0}
    suppressed: dict[str, int] = {}
    for status, reason, n in delivery_counts.of(session, campaign_id):
        if status == DeliveryStatus.SUPPRESSED:
            suppressed[reason] = suppressed.get(reason, 0) + n
        elif status == DeliveryStatus.PENDING:  # or sending: one count
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
    """Per-device rows of a campaign, optionally by status.

    Paginated on id `within` campaign_id. Without a status, the campaign is asked for
    as a one-value range rather than with `=`: PostgreSQL drops an equality-bound
    column from the ORDER BY, then takes the half of the table that one campaign of two
    holds to be spread evenly over the ids, and walks the primary key past the other
    campaign's rows (a million of them: 200 ms and more). With the range, the index on
    (campaign_id, id) returns the page in order. With a status, the equality uses the
    index on (campaign_id, status, id).
    """
    if status is None:
        return sa.select(Delivery).where(Delivery.campaign_id.between(campaign_id, campaign_id))
    stmt = sa.select(Delivery).where(Delivery.campaign_id == campaign_id)
    if status == DeliveryStatus.PENDING:
        return stmt.where(Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.SENDING]))
    return stmt.where(Delivery.status == status)


_EXPLANATIONS = {
    "sent": "Handed to its push service (FCM or APNs), which accepted it.",
    "failed": "Its push service refused it ({reason}).",
    "suppressed": "Not sent: {reason}.",
    "pending": "Not decided yet: waiting for the dispatcher.",
    "sending": "Being handed to its push service right now.",
}


def explain(
    session: Db, campaign: Campaign, device_id: str, caps: Sequence[messaging.Cap] = ()
) -> dict[str, Any]:
    """Why this device did or did not get the campaign (and what would stop it now)."""
    delivery = session.scalars(
        sa.select(Delivery).where(
            Delivery.campaign_id == campaign.id, Delivery.device_id == device_id
        )
    ).first()
    as_of = campaign.started_at or utcnow()
    conditions = aud.filters(campaign.audience, as_of)
    columns = [condition.label(name) for name, condition in conditions.items()]
    reason = _reason_now(session, campaign, caps, utcnow())
    stmt = aud.with_terminations(
        sa.select(reason.label("reason"), *columns)
        .select_from(Device)
        .where(Device.id == device_id)
    )
    row = session.execute(stmt).first()
    if row is None and delivery is None:
        raise NotFound("No such device, and no delivery of this campaign to it.")
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
