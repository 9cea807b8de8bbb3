"""Ledger settings: every limit and tunable of the ledger in one dataclass, with env overrides.

Each field has a default and can be overridden by `LEDGERCHAT_LEDGER_<FIELD NAME IN CAPITALS>`.
`default_database_url()` is the one place that resolves the service's default database, so the
web package and the audit CLI open the same file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "LEDGERCHAT_LEDGER_"


def default_database_url(environ: Mapping[str, str] | None = None) -> str:
    """LEDGERCHAT_DATABASE_URL, else an SQLite file `ledgerchat.db` in the data directory.

    The data directory is LEDGERCHAT_DATA_DIR, else `./data` (relative to the working directory).
    """
    env = os.environ if environ is None else environ
    url = env.get("LEDGERCHAT_DATABASE_URL", "").strip()
    if url:
        return url
    data_dir = Path(env.get("LEDGERCHAT_DATA_DIR", "").strip() or "data")
    return f"sqlite+aiosqlite:///{data_dir / 'ledgerchat.db'}"


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    """Tunables of one ledger process. Construct directly, or `LedgerSettings.from_env()`."""

    snapshot_every: int = field(default=100, metadata=_doc("events per account between snapshots"))
    hold_ttl_default_s: float = field(default=300.0, metadata=_doc("hold lifetime when none given"))
    hold_ttl_max_s: float = field(default=86_400.0, metadata=_doc("longest hold lifetime allowed"))
    max_active_holds_per_account: int = field(
        default=64, metadata=_doc("unresolved holds one account may have at once")
    )
    max_amount: int = field(default=10**12, metadata=_doc("largest amount of one command"))
    max_balance: int = field(default=10**15, metadata=_doc("largest posted balance of an account"))
    batch_size: int = field(default=256, metadata=_doc("commands the writer commits at once"))
    queue_size: int = field(default=4096, metadata=_doc("commands waiting for the writer"))
    write_retries: int = field(
        default=5, metadata=_doc("retries of a batch after a conflict or busy database")
    )
    retry_backoff_s: float = field(default=0.01, metadata=_doc("first retry delay, doubled each"))
    busy_timeout_ms: int = field(default=5_000, metadata=_doc("SQLite busy timeout"))
    command_timeout_s: float = field(
        default=30.0, metadata=_doc("longest a caller waits for the writer")
    )
    history_page_default: int = field(default=50, metadata=_doc("history entries per page"))
    history_page_max: int = field(default=200, metadata=_doc("largest history page"))
    cache_max_accounts: int = field(
        default=10_000, metadata=_doc("account states the writer keeps in memory")
    )
    read_pool_size: int = field(default=4, metadata=_doc("database connections for reads"))
    sweep_interval_s: float = field(
        default=30.0, metadata=_doc("background expired-hold sweep period; 0 disables it")
    )
    sweep_batch_size: int = field(default=500, metadata=_doc("expired holds released per sweep"))
    audit_expired_hold_grace_s: float = field(
        default=300.0, metadata=_doc("how long an expired hold may wait for the sweeper")
    )

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                # NaN passes every comparison below; infinity would overflow later.
                raise ValueError(f"ledger setting {item.name} must be finite, got {value!r}")
            allow_zero = item.name in {"sweep_interval_s", "write_retries", "retry_backoff_s"}
            if value < 0 or (value == 0 and not allow_zero):
                raise ValueError(f"ledger setting {item.name} must be positive, got {value!r}")
        if self.history_page_default > self.history_page_max:
            raise ValueError("history_page_default must not exceed history_page_max")
        if self.hold_ttl_default_s > self.hold_ttl_max_s:
            raise ValueError("hold_ttl_default_s must not exceed hold_ttl_max_s")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LedgerSettings:
        """Defaults overridden by LEDGERCHAT_LEDGER_* variables; a malformed value is an error."""
        env = os.environ if environ is None else environ
        overrides: dict[str, int | float] = {}
        for item in dataclasses.fields(cls):
            name = ENV_PREFIX + item.name.upper()
            raw = env.get(name)
            if raw is None or not raw.strip():
                continue
            parse = int if item.type in ("int", int) else float
            try:
                overrides[item.name] = parse(raw.strip())
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a valid {parse.__name__}") from None
        return cls(**overrides)  # type: ignore[arg-type]
