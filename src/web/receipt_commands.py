"""`ledgerchat verify RECEIPT` (offline, no database) and `ledgerchat checkpoint`.

`verify` exits 0 when the receipt holds, 1 when it does not (each problem on stderr), 2 when
the file or the key cannot be read as one. `checkpoint` signs every account head that moved
since its last checkpoint, as the service does at intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ledger.checkpoints import load_public_key
from ledger.errors import InvalidArgument
from ledger.settings import default_public_key_path
from web.commands import database_options, guarded, run_with_services
from web.domain.receipts.document import check_receipt
from web.services import Services

EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_UNREADABLE = 2
MAX_RECEIPT_BYTES = 64 * 1024 * 1024


def _unreadable(message: str) -> int:
    print(f"ledgerchat verify: unreadable: {message}", file=sys.stderr)
    return EXIT_UNREADABLE


def verify(args: argparse.Namespace) -> int:
    key_path = Path(args.public_key) if args.public_key else default_public_key_path()
    try:
        public_key = load_public_key(key_path.read_bytes())
    except (OSError, InvalidArgument) as exc:
        return _unreadable(f"public key {key_path}: {exc}")
    try:
        with Path(args.receipt).open("rb") as file:
            data = file.read(MAX_RECEIPT_BYTES + 1)
        if len(data) > MAX_RECEIPT_BYTES:
            return _unreadable(f"{args.receipt} is larger than {MAX_RECEIPT_BYTES} bytes")
        document = json.loads(data)
        problems = check_receipt(document, public_key)
    except (OSError, ValueError, InvalidArgument, TypeError) as exc:
        return _unreadable(f"{args.receipt}: {exc}")
    if problems:
        for problem in problems:
            print(f"invalid: {problem}", file=sys.stderr)
        return EXIT_INVALID
    checkpoint = document["checkpoint"]
    hold = document["hold"]
    print(
        f"valid: request {document['request_id']}: placed {hold['placed']}, captured "
        f"{hold['captured']}, released {hold['released']}, refunded {hold['refunded']} credits; "
        f"{len(document['events'])} events chained to the checkpoint "
        f"{checkpoint['account_id']}:{checkpoint['sequence']} (key {checkpoint['key_id']})"
    )
    return EXIT_VALID


def checkpoint(args: argparse.Namespace) -> int:
    async def work(services: Services) -> list[dict[str, Any]]:
        return [c.to_dict() for c in await services.receipts.checkpoint()]

    signed = run_with_services(args, work)
    for entry in signed:
        print(f"signed {entry['account_id']}:{entry['sequence']} {entry['head_hash']}")
    print(f"{len(signed)} checkpoints signed")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check a chat receipt offline (exit 0 valid, 1 invalid, 2 unreadable)",
        description="Recompute the receipt's event hashes, their chain to the signed "
        "checkpoint and the checkpoint's Ed25519 signature; no database is needed.",
    )
    parser.add_argument("receipt", help="the receipt JSON (from GET /api/receipts/ID)")
    parser.add_argument(
        "--public-key",
        metavar="FILE",
        help="the service's public key, PEM or base64 (GET /api/ledger/public-key.pem; "
        "default: <data dir>/ledger-signing-key.pub)",
    )
    parser.set_defaults(handler=verify)
    signer = subparsers.add_parser(
        "checkpoint", help="sign the head of every account's ledger chain that moved, now"
    )
    database_options(signer)
    signer.set_defaults(handler=guarded(checkpoint))
