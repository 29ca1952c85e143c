"""The data inventory: every stored column, declared personal (with why and how long) or not.

One entry per column of every table in the models' metadata. A test walks the metadata and
fails on a column without an entry, so a new column cannot be stored unexamined; export and
erasure are driven by these entries and tested from them (tests/test_inventory.py).

Adding a column means adding one line to its table below, either

    "push_provider": device(Purpose.NOTIFICATIONS, Basis.CONTRACT, "device.push_provider"),

for personal data of a device (the last argument is where it appears in the device's export,
or ``None`` with a ``why_not_exported``), or

    "priority": not_personal("the campaign's FCM priority"),

A new table gets a block of its own; rows tied to a device should reference ``devices.id``:
erasure then deletes them (``Erasure.WITH_DEVICE``) or unlinks them (``Erasure.UNLINKED``)
without more code. Anything else (an id kept inside a JSON column, say) is
``Erasure.KEYED_HASH`` with a scrubber registered in ``mobile_api/services/erasure.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa


class Purpose(StrEnum):
    """The purposes the privacy policy names, and nothing else."""

    NOTIFICATIONS = "notifications"  # "to make sure you get the right notifications"
    PLACES = "places"  # location, only to find places near the user (never stored)
    ANALYTICS = "analytics"  # only with the user's analytics consent
    CONSENT = "consent"  # proof of what the user allowed, and when
    SECURITY = "security"  # authenticating the app, devices and staff
    SUPPORT = "support"  # the helpdesk's handling of a device or account
    ACCOUNT_CLOSURE = "account_closure"  # a terminated account's devices silenced, then purged
    ACCOUNTABILITY = "accountability"  # the audit trail of staff actions


class Basis(StrEnum):
    """The legal basis of the processing (GDPR art. 6(1))."""

    CONSENT = "consent"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal_obligation"
    LEGITIMATE_INTERESTS = "legitimate_interests"


class Subject(StrEnum):
    """Whose data it is."""

    DEVICE = "device"  # the app user, through the installation (and its account)
    STAFF = "staff"  # a member of staff, or an API key they hold


class Erasure(StrEnum):
    """What erasing the data subject does to the column."""

    WITH_DEVICE = "row deleted when the device is erased"
    WITH_ACCOUNT = "row deleted when the account is erased or purged"
    UNLINKED = "set to NULL when the device is erased; the row keeps no personal data"
    KEYED_HASH = "the erased id is replaced by its keyed hash (HMAC under SECRET_KEY)"
    NOT_ERASED = "kept: it names nobody but staff, and the audit trail is hash-chained"


# The app unregisters, privacy staff erase it, or its account is purged after termination.
UNTIL_ERASED = "until the device is erased"


@dataclass(frozen=True, slots=True)
class Personal:
    """A column that can hold personal data, and everything the policy promises about it."""

    purpose: Purpose
    basis: Basis
    retention: str
    erasure: Erasure
    # Where the value appears in a device export: "device.os_version", "consents[].purpose"
    # (every item of a list), "preferences.analytics". None: not exported, see the reason.
    export: str | None
    subject: Subject = Subject.DEVICE
    why_not_exported: str | None = None

    def __post_init__(self) -> None:
        if (self.export is None) == (self.why_not_exported is None):
            raise ValueError("give either an export path or why the column is not exported")


@dataclass(frozen=True, slots=True)
class NotPersonal:
    """A column that cannot hold personal data, and why."""

    why: str


Entry = Personal | NotPersonal


def device(
    purpose: Purpose,
    basis: Basis,
    export: str | None,
    *,
    retention: str = UNTIL_ERASED,
    erasure: Erasure = Erasure.WITH_DEVICE,
    why_not_exported: str | None = None,
) -> Personal:
    """Personal data of a device's user, kept until the device is erased unless said otherwise."""
    return Personal(purpose, basis, retention, erasure, export, Subject.DEVICE, why_not_exported)


def staff(purpose: Purpose, basis: Basis, retention: str, why_not_exported: str) -> Personal:
    """Personal data of staff (never part of a device export, never erased with a device)."""
    return Personal(
        purpose, basis, retention, Erasure.NOT_ERASED, None, Subject.STAFF, why_not_exported
    )


def not_personal(why: str) -> NotPersonal:
    """A column that holds no personal data."""
    return NotPersonal(why)


P, B = Purpose, Basis
TELEMETRY_RETENTION = (
    "TELEMETRY_RETENTION_DAYS (default 90) days, or until the device is erased,"
    " or until analytics consent is withdrawn"
)
DELIVERY_RETENTION = "DELIVERY_RETENTION_DAYS (default 180) days, or unlinked when erased"
HASH_ONLY = "a one-way hash, useless to the user; the value it hashes is exported or never kept"
ROW_KEY = "a row key generated by the service"
STAFF_LIFE = "as long as the audit trail, or the key, exists"

INVENTORY: dict[str, dict[str, Entry]] = {
    "devices": {
        "id": device(P.NOTIFICATIONS, B.CONTRACT, "device.id"),
        "installation_id": device(P.NOTIFICATIONS, B.CONTRACT, "device.installation_id"),
        "token_hash": device(P.SECURITY, B.CONTRACT, None, why_not_exported=HASH_ONLY),
        "platform": device(P.NOTIFICATIONS, B.CONTRACT, "device.platform"),
        "os_version": device(P.NOTIFICATIONS, B.CONTRACT, "device.os_version"),
        "device_model": device(P.NOTIFICATIONS, B.CONTRACT, "device.device_model"),
        "app_version": device(P.NOTIFICATIONS, B.CONTRACT, "device.app_version"),
        "locale": device(P.NOTIFICATIONS, B.CONTRACT, "device.locale"),
        "timezone": device(P.NOTIFICATIONS, B.CONTRACT, "device.timezone"),
        "push_token": device(P.NOTIFICATIONS, B.CONTRACT, "device.push_token"),
        "push_token_hash": device(P.NOTIFICATIONS, B.CONTRACT, None, why_not_exported=HASH_ONLY),
        "push_provider": device(P.NOTIFICATIONS, B.CONTRACT, "device.push_provider"),
        "push_token_invalid_at": device(
            P.NOTIFICATIONS, B.CONTRACT, "device.push_token_invalid_at"
        ),
        "push_permission": device(P.NOTIFICATIONS, B.CONTRACT, "device.push_permission"),
        "location_permission": device(P.PLACES, B.CONSENT, "device.location_permission"),
        "account_id": device(P.NOTIFICATIONS, B.CONTRACT, "device.account_id"),
        "promotional_push": device(P.CONSENT, B.LEGAL_OBLIGATION, "preferences.promotional_push"),
        "location_services": device(P.CONSENT, B.LEGAL_OBLIGATION, "preferences.location_services"),
        "analytics": device(P.CONSENT, B.LEGAL_OBLIGATION, "preferences.analytics"),
        "disabled_at": device(P.SUPPORT, B.LEGITIMATE_INTERESTS, "device.disabled_at"),
        "disabled_reason": device(P.SUPPORT, B.LEGITIMATE_INTERESTS, "device.disabled_reason"),
        "disabled_ticket": device(P.SUPPORT, B.LEGITIMATE_INTERESTS, "device.disabled_ticket"),
        "created_at": device(P.NOTIFICATIONS, B.CONTRACT, "device.created_at"),
        "updated_at": device(P.NOTIFICATIONS, B.CONTRACT, "device.updated_at"),
        "last_seen_at": device(P.NOTIFICATIONS, B.CONTRACT, "device.last_seen_at"),
        "quiet_hours_start": device(
            P.NOTIFICATIONS, B.CONTRACT, "notification_settings.quiet_hours.start"
        ),
        "quiet_hours_end": device(
            P.NOTIFICATIONS, B.CONTRACT, "notification_settings.quiet_hours.end"
        ),
    },
    "device_category_preferences": {
        "device_id": device(P.CONSENT, B.CONSENT, "device.id"),
        "category_key": device(P.CONSENT, B.CONSENT, "notification_settings.categories{keys}"),
        "enabled": device(P.CONSENT, B.CONSENT, "notification_settings.categories{values}"),
        "updated_at": device(
            P.CONSENT,
            B.CONSENT,
            None,
            why_not_exported="each change is in the export's consent history, with its time",
        ),
    },
    "notification_categories": {
        column: not_personal("the operator's catalogue of notification categories")
        for column in (
            "key",
            "name",
            "kind",
            "default_enabled",
            "user_can_opt_out",
            "android_channel_id",
            "ios_interruption_level",
            "created_at",
            "updated_at",
        )
    },
    "staff_members": {
        "id": not_personal(ROW_KEY),
        "email": staff(
            P.SECURITY,
            B.LEGITIMATE_INTERESTS,
            "as long as the staff account exists",
            "a staff member's sign-in name, not a user's",
        ),
        "role": not_personal("what the staff member may do"),
        "password_hash": not_personal("an argon2 hash of a staff password"),
        "totp_secret": not_personal(
            "a staff member's authenticator secret, encrypted (CONSOLE_TOTP_KEY or from SECRET_KEY)"
        ),
        "totp_last_step": not_personal("the last TOTP step used, against replays"),
        "disabled_at": not_personal("when the staff account was disabled"),
        "created_at": not_personal("when the staff account was made"),
        "last_sign_in_at": staff(
            P.SECURITY,
            B.LEGITIMATE_INTERESTS,
            "as long as the staff account exists",
            "when a staff member last signed in, not a user",
        ),
    },
    "staff_links": {
        column: not_personal(
            "a staff member's one-time sign-in link (hashed, expiring; TOTP secret encrypted)"
        )
        for column in (
            "id",
            "staff_id",
            "token_hash",
            "totp_secret",
            "created_at",
            "expires_at",
            "used_at",
        )
    },
    "staff_sessions": {
        column: not_personal("a staff member's console session (hashed token)")
        for column in ("id", "staff_id", "token_hash", "csrf_token", "created_at", "last_seen_at")
    },
    "consent_records": {
        "id": not_personal(ROW_KEY),
        "device_id": device(P.CONSENT, B.LEGAL_OBLIGATION, "device.id"),
        "purpose": device(P.CONSENT, B.LEGAL_OBLIGATION, "consents[].purpose"),
        "granted": device(P.CONSENT, B.LEGAL_OBLIGATION, "consents[].granted"),
        "source": device(P.CONSENT, B.LEGAL_OBLIGATION, "consents[].source"),
        "policy_version": device(P.CONSENT, B.LEGAL_OBLIGATION, "consents[].policy_version"),
        "recorded_at": device(P.CONSENT, B.LEGAL_OBLIGATION, "consents[].recorded_at"),
    },
    "telemetry_events": {
        "id": not_personal(ROW_KEY),
        "device_id": device(P.ANALYTICS, B.CONSENT, "device.id", retention=TELEMETRY_RETENTION),
        **{
            column: device(
                P.ANALYTICS,
                B.CONSENT,
                f"telemetry.events[].{column}",
                retention=TELEMETRY_RETENTION,
            )
            for column in ("event_id", "name", "occurred_at", "received_at", "properties")
        },
    },
    "device_version_changes": {
        "id": not_personal(ROW_KEY),
        **{
            column: device(
                P.ANALYTICS,
                B.CONSENT,
                "device.id" if column == "device_id" else f"telemetry.version_history[].{column}",
                retention=TELEMETRY_RETENTION,
            )
            for column in ("device_id", "field", "old_value", "new_value", "changed_at")
        },
    },
    "campaigns": {
        "id": not_personal(ROW_KEY),
        "name": not_personal("marketing's name for the campaign"),
        "category": not_personal("promotional or service"),
        "title": not_personal("the message sent to the whole audience"),
        "body": not_personal("the message sent to the whole audience"),
        "data": not_personal("the message's data payload, the same for the whole audience"),
        "audience": device(
            P.NOTIFICATIONS,
            B.LEGITIMATE_INTERESTS,
            None,
            erasure=Erasure.KEYED_HASH,
            retention="as long as the campaign; an erased device's or account's id is hashed",
            why_not_exported="holds device or account ids only when marketing targets them "
            "by id; the export's deliveries name every campaign that reached the device",
        ),
        "ttl_seconds": not_personal("a message setting"),
        "collapse_key": not_personal("a message setting"),
        "category_key": not_personal("the campaign's notification category"),
        "content": not_personal("the message per language, the same for the whole audience"),
        "default_locale": not_personal("the language of the fallback text"),
        "image_url": not_personal("rich content, the same for the whole audience"),
        "link": not_personal("rich content, the same for the whole audience"),
        "sound": not_personal("rich content, the same for the whole audience"),
        "badge": not_personal("rich content, the same for the whole audience"),
        "send_at": not_personal("the campaign's schedule"),
        "local_time": not_personal("the campaign's schedule"),
        "fallback_timezone": not_personal("the campaign's schedule"),
        "priority": not_personal("a message setting"),
        "status": not_personal("the campaign's state"),
        "created_by": staff(
            P.ACCOUNTABILITY,
            B.LEGITIMATE_INTERESTS,
            STAFF_LIFE,
            "names the staff member or API key that created the campaign, not a user",
        ),
        **{
            column: not_personal("the campaign's progress and counts")
            for column in (
                "created_at",
                "queued_at",
                "started_at",
                "finished_at",
                "enumerated_through",
                "enumeration_done",
                "targeted",
                "progress_at",
                "recovery_queued_at",
                "final_sent",
                "final_failed",
                "final_invalid_tokens_pruned",
                "final_suppressed",
            )
        },
    },
    "campaign_deliveries": {
        "id": not_personal(ROW_KEY),
        "campaign_id": device(
            P.NOTIFICATIONS,
            B.CONTRACT,
            "deliveries[].campaign_id",
            retention=DELIVERY_RETENTION,
            erasure=Erasure.UNLINKED,
        ),
        "device_id": device(
            P.NOTIFICATIONS,
            B.CONTRACT,
            "device.id",
            retention=DELIVERY_RETENTION,
            erasure=Erasure.UNLINKED,
        ),
        **{
            column: device(
                P.NOTIFICATIONS,
                B.CONTRACT,
                f"deliveries[].{column}",
                retention=DELIVERY_RETENTION,
                erasure=Erasure.UNLINKED,
            )
            for column in ("status", "reason", "attempts", "updated_at")
        },
        "next_attempt_at": not_personal("the dispatcher's schedule of the row"),
        "claimed_at": not_personal("the dispatcher's lease of the row"),
        "handed_at": not_personal("when the dispatcher handed the row's message over"),
        "due_at": not_personal("when the row's message became due (its local-time wave)"),
    },
    "campaign_delivery_counts": {
        column: not_personal("how many of a campaign's deliveries are in one state")
        for column in ("campaign_id", "status", "reason", "n")
    },
    "notifications": {
        "id": not_personal(ROW_KEY),
        "category_key": not_personal("the notification's category"),
        # The message as the helpdesk backend wrote it to one account. It is deleted with
        # the notification (DELIVERY_RETENTION_DAYS); the helpdesk decides what it says.
        **{
            column: not_personal("the helpdesk's message text and settings")
            for column in (
                "title",
                "body",
                "content",
                "default_locale",
                "data",
                "link",
                "image_url",
                "ttl_seconds",
                "collapse_key",
            )
        },
        "account_id": device(
            P.NOTIFICATIONS,
            B.CONTRACT,
            None,
            retention=DELIVERY_RETENTION,
            erasure=Erasure.KEYED_HASH,
            why_not_exported="each device's export lists the notifications it was sent",
        ),
        "device_ids": device(
            P.NOTIFICATIONS,
            B.CONTRACT,
            None,
            retention=DELIVERY_RETENTION,
            erasure=Erasure.KEYED_HASH,
            why_not_exported="each device's export lists the notifications it was sent",
        ),
        "created_by": not_personal("the API key that sent it (key:<id>)"),
        "created_role": not_personal("the role of that key"),
        "created_at": not_personal("when it was accepted"),
    },
    "notification_deliveries": {
        "id": not_personal(ROW_KEY),
        "device_id": device(
            P.NOTIFICATIONS,
            B.CONTRACT,
            "device.id",
            retention=DELIVERY_RETENTION,
            erasure=Erasure.UNLINKED,
        ),
        **{
            column: device(
                P.NOTIFICATIONS,
                B.CONTRACT,
                f"notifications[].{column}",
                retention=DELIVERY_RETENTION,
                erasure=Erasure.UNLINKED,
            )
            for column in ("notification_id", "status", "reason", "attempts", "updated_at")
        },
        "next_attempt_at": not_personal("the dispatcher's schedule of the row"),
        "claimed_at": not_personal("the dispatcher's lease of the row"),
    },
    "push_breakers": {
        column: not_personal("a push provider's circuit breaker")
        for column in ("provider", "trips", "open_until")
    },
    "idempotency_keys": {
        "api_key_id": not_personal("the API key that used the Idempotency-Key"),
        "key": not_personal("a machine's request key, kept 24 hours"),
        "fingerprint": not_personal("a hash of the request body"),
        "notification_id": not_personal("the notification the key made"),
        "created_at": not_personal("when the key was first used"),
    },
    "account_terminations": {
        "account_id": device(
            P.ACCOUNT_CLOSURE,
            B.LEGITIMATE_INTERESTS,
            "account_id",
            retention="PURGE_AFTER_DAYS (default 14) days after termination",
            erasure=Erasure.WITH_ACCOUNT,
        ),
        "terminated_at": device(
            P.ACCOUNT_CLOSURE,
            B.LEGITIMATE_INTERESTS,
            "terminated_at",
            retention="PURGE_AFTER_DAYS (default 14) days after termination",
            erasure=Erasure.WITH_ACCOUNT,
        ),
    },
    "account_tombstones": {
        "account_hash": not_personal(
            "a keyed hash (HMAC under SECRET_KEY) of a purged account's id: it confirms an id "
            "given to it, and names nobody otherwise"
        ),
        "purged_at": not_personal("when an unnamed account was purged"),
    },
    "audit_events": {
        "id": not_personal(ROW_KEY),
        "recorded_at": not_personal("when the action happened"),
        "actor": staff(
            P.ACCOUNTABILITY,
            B.LEGITIMATE_INTERESTS,
            STAFF_LIFE,
            "names the staff member or key that acted, not a user; devices act as 'device'",
        ),
        "action": not_personal("what was done"),
        "target": not_personal("a keyed hash of a device or account id, or a campaign or key id"),
        "request_id": not_personal("a random id of the HTTP request"),
        "details": not_personal(
            "counts, categories and ticket references only; staff-written reasons stay on the "
            "device row and go with it"
        ),
        "prev_hash": not_personal("the hash chain"),
        "hash": not_personal("the hash chain"),
    },
    "api_keys": {
        "id": not_personal(ROW_KEY),
        "role": not_personal("what the key may do"),
        "name": staff(
            P.SECURITY,
            B.LEGITIMATE_INTERESTS,
            STAFF_LIFE,
            "a label staff give a key, which may name its holder",
        ),
        "secret_hash": not_personal("a hash of a machine secret"),
        "created_at": not_personal("when the key was made"),
        "revoked_at": not_personal("when the key was revoked"),
    },
}


def entry(table: str, column: str) -> Entry | None:
    """The declaration of one column, or None if it has none."""
    return INVENTORY.get(table, {}).get(column)


def undeclared(metadata: sa.MetaData) -> list[str]:
    """Every `table.column` of the metadata without an inventory entry."""
    return [
        f"{table.name}.{column.name}"
        for table in metadata.sorted_tables
        for column in table.columns
        if entry(table.name, column.name) is None
    ]


def stale(metadata: sa.MetaData) -> list[str]:
    """Every inventory entry naming a column the metadata does not have."""
    return [
        f"{table}.{column}"
        for table, columns in INVENTORY.items()
        for column in columns
        if table not in metadata.tables or column not in metadata.tables[table].columns
    ]


def personal(table: str) -> dict[str, Personal]:
    """The personal columns of a table."""
    return {c: e for c, e in INVENTORY.get(table, {}).items() if isinstance(e, Personal)}


def exported_device_fields() -> tuple[str, ...]:
    """The device columns exported under `device` in every device export, in declared order."""
    return tuple(c for c, e in personal("devices").items() if e.export == f"device.{c}")


def exported_columns(table: str, path: str) -> tuple[str, ...]:
    """The columns of `table` exported in each item of the export's list at `path`."""
    return tuple(c for c, e in personal(table).items() if e.export == f"{path}[].{c}")
