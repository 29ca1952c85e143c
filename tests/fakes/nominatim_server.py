"""A loopback Nominatim: enough of /search and /reverse for geopy, recording everything it receives.

Tests point the real gateway (and so geopy, requests and urllib3) at it and then assert on what
the "provider" saw: every path, query parameter and header of every request.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.loopback import LoopbackFake, LoopbackServer

# Where generated places sit inside the requested viewbox, as (fraction north, fraction east).
# Deliberately not in distance order: the gateway has to sort.
_PLACE_OFFSETS = (
    (0.92, 0.10),
    (0.50, 0.52),
    (0.05, 0.95),
    (0.62, 0.40),
    (0.30, 0.75),
    (0.48, 0.47),
    (0.80, 0.85),
    (0.15, 0.20),
)
_NAMES = ("Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake provider received it."""

    path: str
    query: str
    params: dict[str, list[str]]
    headers: list[tuple[str, str]]
    received_at: float  # time.monotonic()

    def param(self, name: str) -> str | None:
        """Return the single value of a query parameter, or None."""
        values = self.params.get(name)
        return values[0] if values else None

    def header(self, name: str) -> str | None:
        """Return a header's value (case-insensitive name), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Behaviour:
    """How the fake answers; the default is a healthy provider."""

    status: int = 200
    retry_after: str | None = None
    delay: float = 0.0  # seconds before anything is sent
    garbage: bool = False  # 200 with a body that is not JSON
    trickle: float = 0.0  # seconds between body bytes
    times: int | None = None  # answer this way this many times, then healthy again
    extra_headers: dict[str, str] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
    # the client's delayed ACK would add ~40 ms to every answer on a kept-alive connection.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        fake = self.server.fake
        split = urlsplit(self.path)
        fake._record(
            RecordedRequest(
                path=split.path,
                query=split.query,
                params=parse_qs(split.query, keep_blank_values=True),
                headers=list(self.headers.items()),
                received_at=time.monotonic(),
            )
        )
        behaviour = fake._next_behaviour()
        # The client may give up first (a timeout test); nothing to do then.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._answer(fake, behaviour, split.path, parse_qs(split.query))

    def _answer(
        self,
        fake: FakeNominatim,
        behaviour: Behaviour,
        path: str,
        params: dict[str, list[str]],
    ) -> None:
        if behaviour.delay:
            time.sleep(behaviour.delay)
        headers = {"Set-Cookie": f"nominatim_session={uuid.uuid4().hex}; Path=/; HttpOnly"}
        headers.update(behaviour.extra_headers)
        if behaviour.status != 200:
            if behaviour.retry_after is not None:
                headers["Retry-After"] = behaviour.retry_after
            # Real error pages sometimes quote the request; this one always does.
            body = {"error": {"code": behaviour.status, "message": f"failed: {self.path}"}}
            self._send(behaviour.status, json.dumps(body).encode(), "application/json", headers)
            return
        if behaviour.garbage:
            self._send(200, b"<html>Bandwidth exceeded</html>", "text/html", headers)
            return
        if path == "/search":
            payload: Any = fake.search_results(params)
        elif path == "/reverse":
            payload = fake.reverse_result(params)
        else:
            self._send(404, b'{"error": "not found"}', "application/json", headers)
            return
        self._send(
            200,
            json.dumps(payload).encode(),
            "application/json",
            headers,
            behaviour.trickle,
        )

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str],
        trickle: float = 0.0,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not trickle:
            self.wfile.write(body)
            return
        for i in range(len(body)):
            self.wfile.write(body[i : i + 1])
            self.wfile.flush()
            time.sleep(trickle)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output (and captured logs) quiet


class _Server(LoopbackServer):
    fake: FakeNominatim


class FakeNominatim(LoopbackFake):
    """A Nominatim-compatible HTTP server on 127.0.0.1 with a free port, run in a daemon thread."""

    handler = _Handler
    server_class = _Server
    thread_name = "fake-nominatim"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._recorded: list[RecordedRequest] = []
        self._behaviour = Behaviour()

    @property
    def domain(self) -> str:
        """host:port, as geopy's ``domain`` wants it."""
        return f"127.0.0.1:{self.port}"

    # recording

    @property
    def recorded(self) -> list[RecordedRequest]:
        """A copy of every request received so far, oldest first."""
        with self._lock:
            return list(self._recorded)

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._recorded.clear()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._recorded.append(request)

    # behaviour

    def behave(self, **changes: Any) -> None:
        """Answer from now on as described by Behaviour(**changes)."""
        with self._lock:
            self._behaviour = Behaviour(**changes)

    def fail(
        self, status: int, *, retry_after: str | None = None, times: int | None = None
    ) -> None:
        """Answer with an HTTP error status (optionally with Retry-After)."""
        self.behave(status=status, retry_after=retry_after, times=times)

    def healthy(self) -> None:
        """Answer normally again."""
        self.behave()

    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            behaviour = self._behaviour
            if behaviour.times is not None:
                behaviour.times -= 1
                if behaviour.times <= 0:
                    self._behaviour = Behaviour()
            return behaviour

    # payloads

    def search_results(self, params: dict[str, list[str]]) -> list[dict[str, Any]]:
        """Deterministic places spread over the requested viewbox (none without one)."""
        term = params.get("q", [""])[0]
        viewbox = params.get("viewbox", [""])[0]
        if not viewbox:
            return []
        west, south, east, north = (float(v) for v in viewbox.split(","))
        west, east = sorted((west, east))
        south, north = sorted((south, north))
        limit = int(params.get("limit", ["10"])[0])
        jsonv2 = params.get("format", ["json"])[0] == "jsonv2"
        places = []
        for i, (fn, fe) in enumerate(_PLACE_OFFSETS[:limit]):
            lat = south + (north - south) * fn
            lon = west + (east - west) * fe
            name = f"{term.title()} {_NAMES[i]}"
            place: dict[str, Any] = {
                "place_id": 100_000 + i,
                "licence": "Data © OpenStreetMap contributors, ODbL 1.0. http://osm.org/copyright",
                "osm_type": "node",
                "osm_id": 2_000_000 + i,
                "lat": f"{lat:.7f}",
                "lon": f"{lon:.7f}",
                "type": term or "yes",
                "place_rank": 30,
                "importance": round(0.5 - i * 0.01, 4),
                "addresstype": "amenity",
                "name": name,
                "display_name": f"{name}, {10 + i}, Teststraße, Mitte, Berlin, 10117, Deutschland",
                "address": {
                    "amenity": name,
                    "house_number": str(10 + i),
                    "road": "Teststraße",
                    "suburb": "Mitte",
                    "city": "Berlin",
                    "ISO3166-2-lvl4": "DE-BE",
                    "postcode": "10117",
                    "country": "Deutschland",
                    "country_code": "de",
                },
                "boundingbox": [
                    f"{lat - 1e-4:.7f}",
                    f"{lat + 1e-4:.7f}",
                    f"{lon - 1e-4:.7f}",
                    f"{lon + 1e-4:.7f}",
                ],
            }
            if jsonv2:
                place["category"] = "amenity"
            else:
                place["class"] = "amenity"
            places.append(place)
        return places

    def reverse_result(self, params: dict[str, list[str]]) -> dict[str, Any]:
        """A reverse answer that is deliberately too detailed (street and house number included)."""
        if "lat" not in params or "lon" not in params:
            return {"error": "Unable to geocode"}
        lat, lon = params["lat"][0], params["lon"][0]
        return {
            "place_id": 42,
            "licence": "Data © OpenStreetMap contributors, ODbL 1.0. http://osm.org/copyright",
            "osm_type": "relation",
            "osm_id": 16347,
            "lat": lat,
            "lon": lon,
            "class": "boundary",
            "type": "administrative",
            "place_rank": 18,
            "display_name": "Teststraße 7, Mitte, Berlin, 10117, Deutschland",
            "address": {
                "house_number": "7",
                "road": "Teststraße",
                "suburb": "Mitte",
                "borough": "Mitte",
                "city": "Berlin",
                "state": "Berlin",
                "ISO3166-2-lvl4": "DE-BE",
                "postcode": "10117",
                "country": "Deutschland",
                "country_code": "de",
            },
            "boundingbox": ["52.50", "52.54", "13.37", "13.43"],
        }
