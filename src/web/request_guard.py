"""What the HTTP edge decides before a request reaches a route, and the headers every answer
carries: the client's real address (X-Forwarded-For believed only from configured trusted
proxies), that a state-changing request comes from this site's own origin and, on the API,
is JSON, and the security headers (CSP, nosniff, referrer policy, no framing).

The JSON rule closes the cross-site "simple request": a browser sends a `text/plain` or form
POST to another site without a CORS preflight, so any web page could post five wrong
passwords to /api/auth/login from a victim's browser and lock the victim out. Requiring
`application/json` forces a preflight that this service never grants; the Origin check refuses
what a browser still sends cross-site. Clients that are not browsers send no Origin.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from litestar.types import Scope

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Routes whose bodies are JSON by contract; Gradio's own routes (the page) are checked by origin.
JSON_ONLY_PREFIXES = ("/api/", "/v1/")
# The longest text an IPv6 address with a zone takes; longer header values are not addresses.
MAX_ADDRESS_CHARS = 64
# Each header hop is parsed; a header with more hops than this is not believed at all.
MAX_FORWARDED_HOPS = 16
DEFAULT_PORTS = {"http": "80", "https": "443"}

# Gradio's page needs inline scripts and styles (its bootstrap and svelte's style attributes),
# blob: workers and eval: without 'unsafe-eval' sign-in fails in chromium ("Evaluating a string
# as JavaScript violates ... CSP", Gradio runs the event handlers it transpiles to JS that way).
# Everything else is same-origin. No framing anywhere.
PAGE_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "media-src 'self' blob: data:; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI at /schema/swagger loads its script and styles from this CDN.
SCHEMA_DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)
COMMON_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """`10.0.0.1, 192.168.0.0/16, ::1` as networks; ValueError names a bad entry."""
    networks: list[IPNetwork] = []
    for entry in (part.strip() for part in text.split(",")):
        if entry:
            networks.append(ipaddress.ip_network(entry, strict=False))
    return tuple(networks)


def parse_address(text: str) -> str | None:
    """`text` as a normalised IP address, or None when it is not one."""
    candidate = text.strip()
    if not candidate or len(candidate) > MAX_ADDRESS_CHARS:
        return None
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


class ClientAddresses:
    """Finds the client address of a request: the peer of the connection, or, when that peer
    is a trusted proxy, the nearest X-Forwarded-For hop that is not one."""

    def __init__(self, trusted_proxies: Iterable[IPNetwork]) -> None:
        self.trusted = tuple(trusted_proxies)

    def is_trusted(self, address: str | None) -> bool:
        if address is None:
            return False
        parsed = ipaddress.ip_address(address)
        return any(parsed in network for network in self.trusted)

    def resolve(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = parse_address(str(client[0])) if client else None
        if not self.trusted or not self.is_trusted(peer):
            return peer or "unknown"
        hops = _forwarded_hops(scope)
        if hops is None:
            return peer or "unknown"
        # Right to left: each trusted proxy vouches for the hop before it.
        for hop in reversed(hops):
            if not self.is_trusted(hop):
                return hop
        return hops[0] if hops else peer or "unknown"


def _forwarded_hops(scope: Scope) -> list[str] | None:
    """Every X-Forwarded-For hop, or None when any is not an IP address (then none is
    believed: a proxy that forwards garbage is not vouching for anything)."""
    hops: list[str] = []
    for name, value in scope.get("headers", []):
        if name.lower() != b"x-forwarded-for":
            continue
        for part in value.decode("latin-1").split(","):
            address = parse_address(part)
            if address is None or len(hops) >= MAX_FORWARDED_HOPS:
                return None
            hops.append(address)
    return hops


def header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == wanted:
            return str(value.decode("latin-1"))
    return None


def _origin_key(scheme: str, netloc: str) -> str:
    """host:port, lower-cased, with the scheme's default port made explicit."""
    netloc = netloc.lower()
    host, _, port = netloc.rpartition(":") if not netloc.endswith("]") else (netloc, "", "")
    if not host or not port.isdigit():
        host, port = netloc, DEFAULT_PORTS.get(scheme, "")
    return f"{host}:{port}"


def origin_allowed(origin: str, scope: Scope, public_url: str) -> bool:
    """Whether `origin` is this service's own: the configured public URL's, else the Host the
    request was sent to (a browser sets Host to the site the page talks to). Without a public
    URL the scheme is unknown (TLS may end at a proxy), so only host and port must match."""
    parts = urlsplit(origin)
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc:
        return False  # includes the "null" origin of sandboxed frames and file: pages
    actual = _origin_key(parts.scheme, parts.netloc)
    if public_url:
        expected = urlsplit(public_url)
        return parts.scheme == expected.scheme and actual == _origin_key(
            expected.scheme, expected.netloc
        )
    host = header(scope, b"host")
    if host is None:
        return False
    return actual in {_origin_key("http", host), _origin_key("https", host)}


def _has_body(scope: Scope) -> bool:
    length = header(scope, b"content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return header(scope, b"transfer-encoding") is not None


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def refusal(scope: Scope, path: str, public_url: str) -> tuple[int, str, str] | None:
    """(status, code, message) when the request must be refused at the edge, else None."""
    if str(scope.get("method", "")).upper() not in STATE_CHANGING_METHODS:
        return None
    origin = header(scope, b"origin")
    if origin is not None and not origin_allowed(origin, scope, public_url):
        return 403, "cross_origin_refused", "requests from another site are refused"
    if (
        path.startswith(JSON_ONLY_PREFIXES)
        and _has_body(scope)
        and not _is_json(header(scope, b"content-type"))
    ):
        return 415, "unsupported_media_type", "the request body must be application/json"
    return None


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    """The headers added to every answer of `path`."""
    csp = SCHEMA_DOCS_CSP if path.startswith("/schema") else PAGE_CSP
    return [*COMMON_HEADERS, (b"content-security-policy", csp.encode())]
