"""Makes the upstream fixtures (tests/remote/upstreams.py) available to this package's tests;
tests that start upstream processes are marked `live` and `slow`."""

from __future__ import annotations

import pytest

from tests.remote.upstreams import (
    engine_upstream,
    make_engine_upstream,
    tiny_gemma_dir,
    upstream,
    vllm_upstream,
)

__all__ = ["engine_upstream", "make_engine_upstream", "tiny_gemma_dir", "upstream", "vllm_upstream"]

UPSTREAM_FIXTURES = frozenset(
    {"upstream", "engine_upstream", "vllm_upstream", "make_engine_upstream"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if UPSTREAM_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.live)
            item.add_marker(pytest.mark.slow)
