"""The records the gateway deals in: one type from the provider, through the cache, to callers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Place:
    """A place the provider found; `distance_m` is set by the gateway (from the exact point)."""

    name: str
    category: str
    lat: float
    lon: float
    address: str
    distance_m: int | None = None

    def to_json(self) -> dict[str, Any]:
        """What the provider said (not one user's distance), JSON-compatible, for the cache."""
        return {f: getattr(self, f) for f in ("name", "category", "lat", "lon", "address")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Place:
        """The place `to_json` gave."""
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Area:
    """The coarse area around a point: never a street or a house number."""

    city: str | None
    district: str | None
    region: str | None
    country: str | None
    country_code: str | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible form, as the cache stores it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Area:
        """The area `to_json` gave."""
        return cls(**data)
