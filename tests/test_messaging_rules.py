"""The time and language rules of v1.1 messages: DST gaps and folds, quiet hours, caps, locales."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mobile_api.services import messaging as rules


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("local_time", "not_before", "zone", "due"),
    [
        # 09:00 on the day New York springs forward is 09:00 EDT, not EST.
        ("09:00", "2027-03-14T00:00", "America/New_York", "2027-03-14T13:00"),
        ("09:00", "2027-03-13T00:00", "America/New_York", "2027-03-13T14:00"),
        # 02:30 does not exist that day: the first valid minute after, 03:00 EDT.
        ("02:30", "2027-03-14T00:00", "America/New_York", "2027-03-14T07:00"),
        # 01:30 happens twice on 7 Nov 2027: the first occurrence (EDT).
        ("01:30", "2027-11-07T00:00", "America/New_York", "2027-11-07T05:30"),
        # Already past in that zone on send_at's day: the next day.
        ("09:00", "2027-03-14T00:00", "Australia/Sydney", "2027-03-14T22:00"),
        ("09:00", "2027-03-14T00:00", "Asia/Kolkata", "2027-03-14T03:30"),
        ("09:00", "2027-03-14T00:00", "Asia/Tokyo", "2027-03-14T00:00"),
    ],
)
def test_local_time_waves(local_time: str, not_before: str, zone: str, due: str) -> None:
    assert rules.local_time_due(local_time, utc(not_before), zone) == utc(due)


def test_quiet_hours_across_midnight_end_in_the_devices_zone() -> None:
    quiet = rules.QuietHours.parse("21:00-08:00")
    assert quiet is not None
    berlin = ZoneInfo("Europe/Berlin")
    # 22:30 in Berlin (winter, UTC+1): quiet until 08:00 the next morning.
    assert quiet.ends_after(utc("2027-01-10T21:30"), berlin) == utc("2027-01-11T07:00")
    # 07:59 is still quiet, 08:00 is not, nor is noon.
    assert quiet.ends_after(utc("2027-01-11T06:59"), berlin) == utc("2027-01-11T07:00")
    assert quiet.ends_after(utc("2027-01-11T07:00"), berlin) is None
    assert quiet.ends_after(utc("2027-01-11T11:00"), berlin) is None
    assert rules.QuietHours.parse("22:00-22:00").ends_after(utc("2027-01-11T22:00"), berlin) is None  # type: ignore[union-attr]
    assert rules.QuietHours.parse(None) is None
    # A device's own hours win over the deployment's.
    own = rules.device_quiet_hours("12:00", "13:00", quiet)
    assert own == rules.QuietHours(rules.clock("12:00"), rules.clock("13:00"))
    assert rules.device_quiet_hours(None, None, quiet) is quiet


def test_caps_parse_into_rolling_windows() -> None:
    assert rules.parse_caps("2/1d, 5/7d") == (
        rules.Cap(2, timedelta(days=1)),
        rules.Cap(5, timedelta(days=7)),
    )
    assert rules.parse_caps(None) == ()
    for bad in ["2", "0/1d", "2/1w", "two/1d"]:
        with pytest.raises(ValueError, match="PROMO_FREQUENCY_CAP"):
            rules.parse_caps(bad)


@pytest.mark.parametrize(
    ("locale", "key"),
    [
        ("pt-BR", "pt-BR"),
        ("PT-br", "pt-BR"),
        ("pt-AO", "pt-BR"),  # same language: first key in sorted order
        ("id-ID", "id"),
        ("fr-FR", None),
        (None, None),
    ],
)
def test_a_locale_gets_its_text_or_the_fallback(locale: str | None, key: str | None) -> None:
    content = {"pt-PT": {}, "pt-BR": {}, "id": {}}
    assert rules.content_key(content, locale) == key


def test_remaining_ttl_counts_from_when_the_message_was_due() -> None:
    due = utc("2027-01-01T00:00")
    assert rules.remaining_ttl(3600, due, due + timedelta(minutes=10)) == 3000
    assert rules.remaining_ttl(None, due, due) is None
