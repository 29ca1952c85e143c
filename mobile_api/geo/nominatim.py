"""Nominatim (the OpenStreetMap geocoder) through geopy: requests made and answers parsed.

Everything here receives coordinates that the gateway has already coarsened; nothing here ever
sees the user's exact position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from geopy.geocoders import Nominatim

from mobile_api.geo.geopy_errors import LOOKUP_ERRORS, translate_geopy_error
from mobile_api.geo.records import Area, Place
from mobile_api.geo.redaction import redact_location_logging
from mobile_api.geo.transport import MinimalRequestsAdapter

OSM_ATTRIBUTION = "Data © OpenStreetMap contributors, ODbL 1.0. https://osm.org/copyright"

# Nominatim zoom 12 is "town / borough": the answer names the city and district, and Nominatim
# does not resolve a street or building at this level.
REVERSE_ZOOM = 12

_CITY_KEYS = ("city", "town", "village", "municipality", "hamlet")
_DISTRICT_KEYS = ("city_district", "borough", "suburb", "district")
_REGION_KEYS = ("state", "region", "province", "state_district")
_STREET_KEYS = ("road", "pedestrian", "footway", "square", "place")


def _first(address: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    for key in keys:
        value = address.get(key)
        if isinstance(value, str) and value:
            return value
    return None


class NominatimProvider:
    """Nominatim (the OpenStreetMap geocoder) through geopy, on the minimal transport.

    Searches send the term as Nominatim's free-text ``q``: a category such as "cafe" is one of
    Nominatim's special phrases, which it resolves to the matching amenity inside the bounded
    viewbox, and a free-text query works the same way. geopy's structured search has no amenity
    field, so the free-text form is the one that serves both.
    """

    attribution = OSM_ATTRIBUTION

    def __init__(
        self, *, domain: str, scheme: str, user_agent: str, pool_maxsize: int = 10
    ) -> None:
        if not user_agent or not user_agent.strip():
            raise ValueError("an app-level user agent is required by the provider's usage policy")
        redact_location_logging()
        self._geocoder = Nominatim(
            domain=domain,
            scheme=scheme,
            user_agent=user_agent,
            adapter_factory=lambda proxies, ssl_context: MinimalRequestsAdapter(
                proxies=proxies, ssl_context=ssl_context, pool_maxsize=pool_maxsize
            ),
        )

    def search(
        self,
        term: str,
        box: tuple[float, float, float, float],
        limit: int,
        timeout: float,
    ) -> list[Place]:
        """Return up to limit places matching term inside box (south, west, north, east)."""
        south, west, north, east = box
        try:
            locations = self._geocoder.geocode(
                term,
                exactly_one=False,
                limit=limit,
                addressdetails=True,
                viewbox=[(south, west), (north, east)],
                bounded=True,
                timeout=timeout,
            )
            return [record for loc in locations or () if (record := self._place(loc.raw))]
        except LOOKUP_ERRORS as exc:
            failure = translate_geopy_error(exc)
        # Raised outside the handler, so it has no __context__: geopy's exception quotes the URL.
        raise failure

    def reverse(self, lat: float, lon: float, timeout: float) -> Area:
        """Return the city-level area containing the point (all None where there is none)."""
        try:
            location = self._geocoder.reverse(
                (lat, lon),
                exactly_one=True,
                addressdetails=True,
                zoom=REVERSE_ZOOM,
                timeout=timeout,
            )
            address = location.raw.get("address", {}) if location is not None else {}
            if not isinstance(address, Mapping):
                raise TypeError("address is not an object")
        except LOOKUP_ERRORS as exc:
            failure = translate_geopy_error(exc)
        else:
            return self._area(address)
        raise failure

    @staticmethod
    def _area(address: Mapping[str, Any]) -> Area:
        """Reduce Nominatim address details to the coarse fields, dropping streets and numbers."""
        country_code = _first(address, ("country_code",))
        return Area(
            city=_first(address, _CITY_KEYS),
            district=_first(address, _DISTRICT_KEYS),
            region=_first(address, _REGION_KEYS),
            country=_first(address, ("country",)),
            country_code=country_code.upper() if country_code else None,
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self._geocoder.adapter.session.close()

    @staticmethod
    def _place(raw: Mapping[str, Any]) -> Place | None:
        """Reduce one Nominatim result to a Place, or None when it has no usable position."""
        try:
            lat, lon = float(raw["lat"]), float(raw["lon"])
        except (KeyError, TypeError, ValueError):
            return None
        display = str(raw.get("display_name") or "")
        name = raw.get("name") or display.split(",", 1)[0].strip()
        address = raw.get("address")
        address = address if isinstance(address, Mapping) else {}
        street = _first(address, _STREET_KEYS)
        number = address.get("house_number")
        if street and isinstance(number, str):
            street = f"{street} {number}"
        parts = [p for p in (street, _first(address, _CITY_KEYS)) if p]
        if not parts and "," in display:
            parts = [display.split(",", 1)[1].strip()]
        return Place(
            name=str(name),
            category=str(raw.get("type") or raw.get("category") or raw.get("class") or ""),
            lat=lat,
            lon=lon,
            address=", ".join(parts),
        )
