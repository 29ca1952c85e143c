"""What the gateway needs from a mapping provider (Nominatim's is in `geo.nominatim`).

Swapping the provider means writing another class of this shape; any geopy geocoder can reuse
the transport (`geo.transport`), the log redaction (`geo.redaction`) and the error translation
(`geo.geopy_errors`).
"""

from __future__ import annotations

from typing import Protocol

from mobile_api.geo.records import Area, Place


class PlacesProvider(Protocol):
    """A mapping provider; every position it is given is already coarse."""

    attribution: str

    def search(
        self,
        term: str,
        box: tuple[float, float, float, float],
        limit: int,
        timeout: float,
    ) -> list[Place]:
        """Return up to limit places matching term inside box (south, west, north, east)."""
        ...

    def reverse(self, lat: float, lon: float, timeout: float) -> Area:
        """Return the city-level area containing the point."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
