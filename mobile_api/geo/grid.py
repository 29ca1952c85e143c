"""Where a position is coarsened to before it leaves the process: a cell, named and centred.

Two precisions, following the OS location permission the app reports:

- ``PRECISE``: latitude and longitude rounded to ``LOCATION_PRECISION_DECIMALS``.
- ``APPROXIMATE``: a cell of a grid whose cells are at least ``APPROXIMATE_CELL_M`` wide in both
  directions at every latitude, as coarse as the OS's own approximate location (Android's coarse
  location and iOS's reduced accuracy are of that order). Rows are a fixed height in degrees of
  latitude; each row has as many equal columns as fit at its poleward edge, so columns widen in
  degrees toward the poles instead of shrinking in metres.

Everything sent for a cell (its centre, the search box around it) and its cache key derive from
the cell alone, never from the exact point inside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

# Degrees of arc to metres on the WGS84 equator; along a parallel at latitude φ a degree of
# longitude is at least this times cos φ (the ellipsoid only lengthens it), so column widths
# computed with it are lower bounds.
EQUATOR_M_PER_DEGREE = 111_319.49
# The shortest degree of latitude on WGS84 (at the equator).
MIN_M_PER_DEGREE_LAT = 110_574.0

APPROXIMATE_CELL_M = 3_000.0
# 180 / ROW_HEIGHT rows; 0.03° is at least 3.3 km of latitude anywhere.
ROW_HEIGHT = 0.03
ROWS = round(180 / ROW_HEIGHT)
# Digits of the numbers sent for a grid cell: enough to place its centre well inside it.
GRID_DECIMALS = 4


class Precision(StrEnum):
    """How finely a position may be known outside the process."""

    PRECISE = "precise"
    APPROXIMATE = "approximate"


@dataclass(frozen=True, slots=True)
class Cell:
    """A coarse cell: its key (for caches), its centre and half extents in degrees."""

    key: str
    lat: float
    lon: float
    half_height: float
    half_width: float
    # Digits the numbers derived from this cell (centre, box) are rounded to when sent.
    decimals: int


def rounded_cell(lat: float, lon: float, decimals: int) -> Cell:
    """The cell of lat/lon rounded to `decimals` digits (the precise permission)."""
    # "+ 0.0" turns -0.0 into 0.0, so the sign of a point just below the equator is not sent.
    cell_lat, cell_lon = round(lat, decimals) + 0.0, round(lon, decimals) + 0.0
    half = 0.5 * 10.0**-decimals
    return Cell(
        key=f"{cell_lat:.{decimals}f}|{cell_lon:.{decimals}f}",
        lat=cell_lat,
        lon=cell_lon,
        half_height=half,
        half_width=half,
        decimals=decimals + 1,
    )


def columns(row: int) -> int:
    """How many columns a row has: as many as are APPROXIMATE_CELL_M wide at its poleward edge."""
    south = -90.0 + row * ROW_HEIGHT
    poleward = max(abs(south), abs(south + ROW_HEIGHT))
    parallel_m = 360.0 * EQUATOR_M_PER_DEGREE * math.cos(math.radians(min(poleward, 90.0)))
    return max(1, math.floor(parallel_m / APPROXIMATE_CELL_M))


def grid_cell(lat: float, lon: float) -> Cell:
    """The approximate-permission grid cell containing lat/lon."""
    row = min(ROWS - 1, max(0, math.floor((lat + 90.0) / ROW_HEIGHT)))
    count = columns(row)
    width = 360.0 / count
    column = min(count - 1, max(0, math.floor((lon + 180.0) / width)))
    return Cell(
        key=f"grid:{row}:{column}",
        lat=round(-90.0 + (row + 0.5) * ROW_HEIGHT, GRID_DECIMALS) + 0.0,
        lon=round(-180.0 + (column + 0.5) * width, GRID_DECIMALS) + 0.0,
        half_height=ROW_HEIGHT / 2,
        half_width=width / 2,
        decimals=GRID_DECIMALS,
    )
