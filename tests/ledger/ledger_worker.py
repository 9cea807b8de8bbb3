"""A separate OS process that writes to the ledger (used by the multi-process tests).

Usage: python ledger_worker.py DATABASE_URL PREFIX PAIRS ACCOUNT_ID [ACCOUNT_ID ...]
Each pair is a hold and a capture of 3 of it on the accounts in turn, with keys unique to
PREFIX, plus one charge per account with a key shared by every worker ("shared-<account>").
Prints one JSON line: captured credits, charges applied (not replayed), errors.
"""

from __future__ import annotations

import asyncio
import json
import sys

from ledger import Ledger, LedgerSettings


async def main(url: str, prefix: str, pairs: int, account_ids: list[str]) -> None:
    ledger = await Ledger.open(url, settings=LedgerSettings(sweep_interval_s=0))
    captured = 0
    shared_applied = 0
    try:

        async def worker(lane: int) -> None:
            nonlocal captured
            for n in range(lane, pairs, 8):
                account_id = account_ids[n % len(account_ids)]
                hold = await ledger.place_hold(
                    account_id, 5, purpose="p", reference="r", idempotency_key=f"{prefix}-h{n}"
                )
                await ledger.capture_hold(
                    account_id, hold.hold, 3, idempotency_key=f"{prefix}-c{n}"
                )
                captured += 3

        await asyncio.gather(*(worker(lane) for lane in range(8)))
        for account_id in account_ids:
            receipt = await ledger.charge(account_id, 1, idempotency_key=f"shared-{account_id}")
            shared_applied += 0 if receipt.replayed else 1
    finally:
        await ledger.close()
    print(json.dumps({"captured": captured, "shared_applied": shared_applied}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
