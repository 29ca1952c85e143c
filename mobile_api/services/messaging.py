"""The v1.1 rules of a message's time and text, as plain functions (no database).

- local time: when "HH:MM in the device's timezone" falls, DST gaps and folds included;
- quiet hours: whether a moment is inside them, and when they end;
- frequency caps: `PROMO_FREQUENCY_CAP` parsed into rolling windows;
- languages: which of a campaign's texts a device's locale gets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
_CAP = re.compile(r"^([1-9][0-9]*)/([1-9][0-9]*)([mhd])$")
_UNIT = {"m": 60, "h": 3600, "d": 86400}
FALLBACK = "fallback"  # preview's language of devices that get the fallback text
# Suppression reasons of v1.1 (besides those of audience.EXCLUSION_REASONS).
EXPIRED = "expired"
FREQUENCY_CAPPED = "frequency_capped"


def clock(text: str) -> time:
    """Parse "HH:MM" (00:00–23:59)."""
    match = _CLOCK.match(text)
    if match is None:
        raise ValueError(f"not a HH:MM time: {text!r}")
    return time(int(match.group(1)), int(match.group(2)))


@lru_cache(maxsize=1024)
def zone(name: str | None, fallback: str = "UTC") -> ZoneInfo:
    """The device's zone, else the fallback (an unknown name counts as none)."""
    for candidate in (name, fallback, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def _exists(naive: datetime, tz: ZoneInfo) -> bool:
    """Whether a wall-clock time occurs in the zone (False inside a DST gap)."""
    there = naive.replace(tzinfo=tz)
    return there.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive


def wall_clock_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """`at` on `day` in `tz`, as a UTC instant.

    A time that does not exist that day (DST gap) means the first valid minute
    after it; one that occurs twice (fold) means the first occurrence.
    """
    naive = datetime.combine(day, at)
    # Gaps are at most a day long (Samoa skipped 30 Dec 2011).
    for _ in range(24 * 60 + 1):
        if _exists(naive, tz):
            return naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
        naive += timedelta(minutes=1)
    raise ValueError(f"no valid time after {at} on {day} in {tz}")


@lru_cache(maxsize=4096)
def local_time_due(local_time: str, not_before: datetime, tz_name: str) -> datetime:
    """The first moment at `local_time` in the zone, on the first day on or after `not_before`."""
    tz = ZoneInfo(tz_name)
    at = clock(local_time)
    day = not_before.astimezone(tz).date()
    for offset in range(3):
        due = wall_clock_instant(day + timedelta(days=offset), at, tz)
        if due >= not_before:
            return due
    raise AssertionError("unreachable: a local time recurs within two days")


@dataclass(frozen=True, slots=True)
class QuietHours:
    """Quiet hours as wall-clock times; start == end means none."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str | None) -> QuietHours | None:
        """From QUIET_HOURS ("21:00-08:00"); None when unset or empty."""
        if not text:
            return None
        start, sep, end = text.partition("-")
        if not sep:
            raise ValueError(f"QUIET_HOURS must look like 21:00-08:00, not {text!r}")
        return cls(clock(start.strip()), clock(end.strip()))

    def ends_after(self, moment: datetime, tz: ZoneInfo) -> datetime | None:
        """When quiet hours end if `moment` is inside them (UTC), else None."""
        if self.start == self.end:
            return None
        local = moment.astimezone(tz)
        now = local.time().replace(tzinfo=None)
        if self.start < self.end:
            inside = self.start <= now < self.end
            end_day = local.date()
        else:  # across midnight, e.g. 21:00-08:00
            inside = now >= self.start or now < self.end
            end_day = local.date() + timedelta(days=1) if now >= self.start else local.date()
        if not inside:
            return None
        return wall_clock_instant(end_day, self.end, tz)


def device_quiet_hours(
    start: str | None, end: str | None, default: QuietHours | None
) -> QuietHours | None:
    """The device's own quiet hours, else the deployment's."""
    if start is not None and end is not None:
        return QuietHours(clock(start), clock(end))
    return default


@dataclass(frozen=True, slots=True)
class Cap:
    """At most `limit` promotional hand-offs to one device in any `window`."""

    limit: int
    window: timedelta


def parse_caps(text: str | None) -> tuple[Cap, ...]:
    """PROMO_FREQUENCY_CAP ("2/1d,5/7d") as caps; empty when unset."""
    if not text:
        return ()
    caps = []
    for part in text.split(","):
        match = _CAP.match(part.strip())
        if match is None:
            raise ValueError(f"PROMO_FREQUENCY_CAP entries look like 2/1d, not {part!r}")
        limit, count, unit = match.groups()
        caps.append(Cap(int(limit), timedelta(seconds=int(count) * _UNIT[unit])))
    return tuple(caps)


def content_key(content: Mapping[str, object] | None, locale: str | None) -> str | None:
    """Which `content` entry a device's locale gets; None for the fallback text.

    The key equal to the locale (case-insensitive), else the first key in sorted
    order with the same language subtag, else the fallback.
    """
    if not content or not locale:
        return None
    wanted = locale.lower()
    keys = sorted(content)
    for key in keys:
        if key.lower() == wanted:
            return key
    language = wanted.split("-")[0]
    for key in keys:
        if key.lower().split("-")[0] == language:
            return key
    return None


def remaining_ttl(ttl_seconds: int | None, due_at: datetime | None, now: datetime) -> int | None:
    """The TTL left at `now` of a message due at `due_at` (None: no TTL); may be ≤ 0."""
    if ttl_seconds is None:
        return None
    if due_at is None:
        return ttl_seconds
    return ttl_seconds - int((now - due_at).total_seconds())
