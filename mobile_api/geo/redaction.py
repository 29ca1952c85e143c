"""Log redaction: positions in geopy's and urllib3's log records are blanked before emission."""

from __future__ import annotations

import logging
import re

_QUERY_STRING = re.compile(r"\?[^\s\"']*")
_DECIMAL = re.compile(r"(?<![\d.])-?\d{1,3}\.\d+(?![\d.])")

# geopy logs every request URL at DEBUG and error bodies at INFO; urllib3 logs request lines,
# retries and header problems with their URL. Our URLs carry the (coarse) position, which must
# never reach a log. A level setting would not hold (anyone, a test included, may turn these
# loggers up to DEBUG), so a filter rewrites each record instead; it only runs for records that
# are going to be emitted, so it costs nothing when these loggers are quiet.
_URL_LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.util.retry",
)


class _RedactLocations(logging.Filter):
    """Blanks URL query strings (and, for geopy, every decimal number) out of log records."""

    def __init__(self, decimals: bool) -> None:
        super().__init__()
        self._decimals = decimals

    def filter(self, record: logging.LogRecord) -> bool:
        message = _QUERY_STRING.sub("?[redacted]", record.getMessage())
        if self._decimals:
            message = _DECIMAL.sub("[redacted]", message)
        record.msg, record.args = message, None
        if record.exc_info:
            # Tracebacks of HTTP errors quote the URL; keep only a redacted rendering of them.
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = (
                None,
                _QUERY_STRING.sub("?[redacted]", text),
            )
        return True


def redact_location_logging() -> None:
    """Install, once, the filters that keep positions out of geopy's and urllib3's log records."""
    targets = [("geopy", True)] + [(name, False) for name in _URL_LOGGERS]
    for name, decimals in targets:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactLocations) for f in logger.filters):
            logger.addFilter(_RedactLocations(decimals))
