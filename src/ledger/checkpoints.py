"""Signed checkpoints of account heads, and the Ed25519 keys that sign and check them.

A checkpoint says "account A's chain had head hash H at sequence N", signed with the service's
Ed25519 key over `checkpoint_message` (a compact JSON array, UTF-8). Anyone holding the public
key can then check, offline, that a segment of events whose hashes chain up to H at N is what
the ledger held: rewriting any event changes every later hash and so H. The ledger never holds
the private key's file: the caller passes a `Signer` in (web keeps the key in the data
directory); a public key is all `verify_signature` and the audit need.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.domain import compact_json
from ledger.errors import InvalidArgument

CHECKPOINT_FORMAT = "ledgerchat-checkpoint/1"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One signed account head. `signature` is base64 of the 64-byte Ed25519 signature."""

    account_id: str
    sequence: int
    head_hash: str
    signed_at_us: int
    key_id: str
    signature: str

    def message(self) -> bytes:
        return checkpoint_message(self.account_id, self.sequence, self.head_hash, self.signed_at_us)

    def to_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "sequence": self.sequence,
            "head_hash": self.head_hash,
            "signed_at_us": self.signed_at_us,
            "key_id": self.key_id,
            "signature": self.signature,
        }


def checkpoint_message(account_id: str, sequence: int, head_hash: str, signed_at_us: int) -> bytes:
    """What is signed: `["ledgerchat-checkpoint/1",account_id,sequence,head_hash,signed_at_us]`
    as compact JSON (no spaces, non-ASCII kept), UTF-8."""
    return compact_json([CHECKPOINT_FORMAT, account_id, sequence, head_hash, signed_at_us]).encode()


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key: names the key."""
    return hashlib.sha256(raw_public_key(public_key)).hexdigest()[:16]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or base64 of its raw 32 bytes;
    InvalidArgument for anything else."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except ValueError as exc:
            raise InvalidArgument(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidArgument("the PEM public key is not an Ed25519 key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("a public key is PEM or base64 of 32 raw bytes") from None
    if len(raw) != 32:
        raise InvalidArgument(f"a raw Ed25519 public key has 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


class Signer:
    """Signs checkpoint messages with one private key (kept by the caller)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self._private_key.sign(message)).decode()


def verify_signature(public_key: Ed25519PublicKey, checkpoint: Checkpoint) -> bool:
    """Whether `checkpoint.signature` is this key's signature of the checkpoint's message."""
    try:
        signature = base64.b64decode(checkpoint.signature, validate=True)
        public_key.verify(signature, checkpoint.message())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
