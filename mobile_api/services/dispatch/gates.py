"""The v1.1 checks at the moment of hand-off: TTL, quiet hours, frequency caps.

They run inside the claim transaction, on rows that consent and deliverability
already let through, so all four are decided as of the real hand-off:

- a message whose TTL (counted from when it became due) has run out: `expired`;
- a promotional message inside the device's quiet hours waits for their end
  (still `pending`, due then), or is `expired` if its TTL ends first;
- a promotional message that would exceed `PROMO_FREQUENCY_CAP` for its device:
  `frequency_capped`. The device rows are locked in id order first (PostgreSQL;
  SQLite's claim already holds the database's single write lock), so of several
  dispatchers racing for one device, the second counts the first's hand-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from mobile_api.services import Db, is_postgresql
from mobile_api.services import audience as aud
from mobile_api.services import messaging as rules
from mobile_api.services.messaging import EXPIRED, FREQUENCY_CAPPED
from models import Campaign, CampaignCategory, Delivery, Device

from .core import Settings

QUIET_HOURS = "quiet_hours"  # a pending row's reason while it waits for quiet hours to end


@dataclass(slots=True)
class Verdicts:
    """What the gates decided for the rows they were given."""

    send: list[Any] = field(default_factory=list)
    suppressed: dict[str, list[int]] = field(default_factory=dict)
    deferred: list[tuple[int, datetime]] = field(default_factory=list)  # (id, due again)

    def suppress(self, row: Any, reason: str) -> None:
        """Record a row as suppressed for `reason`."""
        self.suppressed.setdefault(reason, []).append(row.id)


def expires_at(campaign: Campaign, row: Any) -> datetime | None:
    """When the row's message runs out of TTL (None: never)."""
    if campaign.ttl_seconds is None or row.due_at is None:
        return None
    return row.due_at + timedelta(seconds=campaign.ttl_seconds)


def _ran_out(campaign: Campaign, row: Any, expiry: datetime, now: datetime) -> bool:
    """Whether the row's TTL is spent before this hand-off.

    A TTL of 0 means "now or never" to FCM and APNs: the first hand-off goes (the push
    service delivers only to a device online at that moment), a retry does not.
    """
    if campaign.ttl_seconds == 0:
        return bool(row.attempts > 0)
    return expiry <= now


def decide(
    session: Db, campaign: Campaign, rows: Sequence[Any], settings: Settings, now: datetime
) -> Verdicts:
    """Split consent-cleared rows into those to send, suppress, or defer."""
    verdicts = Verdicts()
    promotional = campaign.category == CampaignCategory.PROMOTIONAL
    candidates = []
    for row in rows:
        expiry = expires_at(campaign, row)
        if expiry is not None and _ran_out(campaign, row, expiry, now):
            verdicts.suppress(row, EXPIRED)
            continue
        if promotional:
            quiet = rules.device_quiet_hours(
                row.quiet_hours_start, row.quiet_hours_end, settings.quiet_hours
            )
            if quiet is not None:
                tz = rules.zone(row.timezone, campaign.fallback_timezone)
                ends = quiet.ends_after(now, tz)
                if ends is not None:
                    if expiry is not None and expiry <= ends:
                        verdicts.suppress(row, EXPIRED)
                    else:
                        verdicts.deferred.append((row.id, ends))
                    continue
        candidates.append(row)
    if promotional and settings.caps and candidates:
        allowed = _within_caps(session, campaign.id, candidates, settings, now)
        for row in candidates:
            if row.device_id in allowed:
                verdicts.send.append(row)
            else:
                verdicts.suppress(row, FREQUENCY_CAPPED)
    else:
        verdicts.send = candidates
    return verdicts


def _within_caps(
    session: Db, campaign_id: str, rows: Sequence[Any], settings: Settings, now: datetime
) -> set[str]:
    """The devices among `rows` whose hand-off now stays within every cap."""
    device_ids = sorted({row.device_id for row in rows})
    if is_postgresql(session):
        # FOR NO KEY UPDATE: serialises cap decisions per device without blocking
        # the foreign-key checks of rows that merely reference the device.
        session.execute(
            sa.select(Device.id)
            .where(Device.id.in_(device_ids))
            .order_by(Device.id)
            .with_for_update(key_share=True)
        ).all()
    widest = max(cap.window for cap in settings.caps)
    at = aud.hand_off_time()
    columns = [
        sa.func.sum(sa.case((at > now - cap.window, 1), else_=0)).label(f"c{i}")
        for i, cap in enumerate(settings.caps)
    ]
    # Other campaigns only: a retry of this campaign's message is the same message.
    counts = {
        row.device_id: row
        for row in session.execute(
            sa.select(Delivery.device_id, *columns)
            .join(Campaign, Campaign.id == Delivery.campaign_id)
            .where(
                Delivery.device_id.in_(device_ids),
                at > now - widest,
                Campaign.category == CampaignCategory.PROMOTIONAL,
                Delivery.campaign_id != campaign_id,
            )
            .group_by(Delivery.device_id)
        )
    }
    allowed = set()
    for device_id in device_ids:
        seen = counts.get(device_id)
        if seen is None or all(
            (getattr(seen, f"c{i}") or 0) < cap.limit for i, cap in enumerate(settings.caps)
        ):
            allowed.add(device_id)
    return allowed
