"""Wire types of the probes."""

from __future__ import annotations

import dataclasses

import msgspec


@dataclasses.dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, str]


class HealthView(msgspec.Struct):
    status: str


class ReadyView(msgspec.Struct):
    ready: bool
    checks: dict[str, str]
