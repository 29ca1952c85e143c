"""HTTP hygiene for the provider: a requests transport that remembers nothing and adds nothing."""

from __future__ import annotations

import http.cookiejar
import ssl
import time
from typing import Any

import requests
import urllib3.exceptions
from geopy.adapters import RequestsAdapter
from requests.structures import CaseInsensitiveDict


class _RefuseAllCookies(http.cookiejar.DefaultCookiePolicy):
    """A cookie policy that neither stores nor returns any cookie."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


class MinimalSession(requests.Session):
    """A requests session that remembers nothing and adds nothing.

    No cookies are kept (the provider cannot link one lookup to the next), no redirect is
    followed (a redirect could carry the query to a host other than the configured provider),
    no environment settings (.netrc credentials, CA or proxy variables) are read, only an Accept
    header is added to what the caller sends, and a numeric timeout is enforced as one deadline
    for the whole exchange: connecting, waiting for the headers and reading the body.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cookies = requests.cookies.RequestsCookieJar(policy=_RefuseAllCookies())
        self.headers = CaseInsensitiveDict({"Accept": "application/json"})
        self.trust_env = False
        self.max_redirects = 0

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Send without following redirects, reading the body within the timeout as a deadline."""
        kwargs["allow_redirects"] = False
        timeout = kwargs.get("timeout")
        if kwargs.get("stream") or not isinstance(timeout, int | float):
            return super().send(request, **kwargs)
        # requests applies a numeric timeout afresh to the connect and to each receive, so a
        # provider that answers late and then stalls mid-body could hold us twice the timeout
        # or more. Connect and headers share one budget (urllib3's total); the body is read
        # here, one receive at a time, each allowed only what is left of the deadline.
        deadline = time.monotonic() + timeout
        kwargs["stream"] = True
        kwargs["timeout"] = urllib3.Timeout(total=timeout)
        response = super().send(request, **kwargs)
        try:
            body = self._read_body(response, deadline)
        except BaseException:
            response.raw.close()  # abandoned mid-body: this connection cannot be reused
            raise
        # What requests' own ``content`` does once it has read a body; close() then hands the
        # connection back to the pool for the next request.
        response._content = body
        response._content_consumed = True  # type: ignore[attr-defined]
        response.close()
        return response

    @staticmethod
    def _read_body(response: requests.Response, deadline: float) -> bytes:
        """Read the whole body by single receives, failing as a timeout once past the deadline."""
        body = bytearray()
        connection = response.raw.connection
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise requests.ReadTimeout("response exceeded its deadline")
                if connection is not None and connection.sock is not None:
                    connection.sock.settimeout(left)
                chunk = response.raw.read1(64 * 1024)
                if not chunk:
                    break
                body += chunk
        except urllib3.exceptions.ReadTimeoutError:
            raise requests.ReadTimeout("response exceeded its deadline") from None
        except urllib3.exceptions.HTTPError as exc:
            raise requests.RequestException(f"unreadable response: {type(exc).__name__}") from None
        return bytes(body)


class MinimalRequestsAdapter(RequestsAdapter):
    """geopy's requests adapter on a MinimalSession, without hidden retries (max_retries=0)."""

    def __init__(
        self,
        *,
        proxies: dict[str, str] | None,
        ssl_context: ssl.SSLContext | None,
        pool_maxsize: int = 10,
    ) -> None:
        super().__init__(
            proxies=proxies,
            ssl_context=ssl_context,
            pool_connections=2,
            pool_maxsize=pool_maxsize,
            max_retries=0,
        )
        # Keep the transport adapters geopy configured (TLS context, pool, no retries) and move
        # them onto our session; geopy's own session has made no request yet.
        configured: requests.Session = self.session
        session = MinimalSession()
        session.proxies = configured.proxies
        for prefix, transport in configured.adapters.items():
            session.mount(prefix, transport)
        self.session: requests.Session = session
