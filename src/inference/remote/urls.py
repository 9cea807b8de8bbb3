"""The base URLs of one remote model: which to use next (least outstanding requests among those
under their concurrency cap and not backing off after a failure), and what each has done lately
(reachability, latency) for /ready and `models list`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

# A failed URL is skipped for BACKOFF_BASE_S, doubling per consecutive failure up to the max.
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 30.0


@dataclass
class UpstreamUrl:
    """One base URL and its recent record."""

    url: str
    outstanding: int = 0
    consecutive_failures: int = 0
    skip_until: float = 0.0
    last_error: str | None = None
    last_latency_ms: float | None = None
    """Time to response headers of the last request or probe that succeeded."""

    def backing_off(self, now: float) -> bool:
        return now < self.skip_until

    def succeeded(self, latency_ms: float | None = None) -> None:
        self.consecutive_failures = 0
        self.skip_until = 0.0
        self.last_error = None
        if latency_ms is not None:
            self.last_latency_ms = latency_ms

    def failed(self, error: str, now: float | None = None) -> None:
        moment = time.monotonic() if now is None else now
        backoff_s = min(BACKOFF_BASE_S * 2**self.consecutive_failures, BACKOFF_MAX_S)
        self.consecutive_failures += 1
        self.skip_until = moment + backoff_s
        self.last_error = error


class UrlPool:
    """The URLs of one model, each capped at `max_concurrent` requests in flight."""

    def __init__(self, urls: tuple[str, ...], max_concurrent: int) -> None:
        if not urls:
            raise ValueError("a URL pool needs at least one URL")
        self.urls = [UpstreamUrl(url) for url in urls]
        self.max_concurrent = max_concurrent

    @property
    def outstanding(self) -> int:
        return sum(url.outstanding for url in self.urls)

    def candidates(self, now: float | None = None) -> Iterator[UpstreamUrl]:
        """The URLs to try, best first: under the cap, healthy ones by fewest outstanding, then
        those backing off (soonest back first) so a request is still tried when all failed
        lately. Reads the state as it is at each step: a failover sees the failure it follows."""
        tried: set[str] = set()
        while True:
            moment = time.monotonic() if now is None else now
            open_urls = [
                url
                for url in self.urls
                if url.url not in tried and url.outstanding < self.max_concurrent
            ]
            if not open_urls:
                return
            best = min(
                open_urls,
                key=lambda url: (
                    url.backing_off(moment),
                    url.skip_until if url.backing_off(moment) else 0.0,
                    url.outstanding,
                ),
            )
            tried.add(best.url)
            yield best

    def all_full(self) -> bool:
        return all(url.outstanding >= self.max_concurrent for url in self.urls)
