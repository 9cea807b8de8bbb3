"""Wire types of the probes."""

from __future__ import annotations

import dataclasses

import msgspec


@dataclasses.dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, str]
    loading_percent: int | None = None
    """While the default model is being prepared and loaded: how far (0-99)."""


class HealthView(msgspec.Struct):
    status: str


class ReadyView(msgspec.Struct):
    ready: bool
    checks: dict[str, str]
    loading_percent: int | None = None
    """While the default model is being prepared (a GGUF hashed and converted) and loaded: how
    far, 0-99; null otherwise."""
