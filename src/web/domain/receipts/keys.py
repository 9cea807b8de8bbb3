"""The Ed25519 key that signs ledger checkpoints, kept in `<data_dir>/ledger-signing-key`.

Generated once (PKCS#8 PEM, mode 0600) the way `<data_dir>/jwt-secret` is: written to a private
temporary file and hard-linked into place, so two processes starting together agree on one key;
read with O_NOFOLLOW and an owner and mode check, so nobody who can write to the data directory
can plant a key of theirs. The public half is also written beside it
(`ledger-signing-key.pub`, PEM) for `ledgerchat audit` and for anyone verifying offline.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoints import Signer, public_key_pem
from ledger.settings import PUBLIC_KEY_FILE
from web.settings import SettingsError

SIGNING_KEY_FILE = "ledger-signing-key"
MAX_KEY_FILE_BYTES = 4096


class SigningKeyError(SettingsError):
    """The key file exists but cannot be trusted or read (message says how to fix it); a
    settings error, so a command or `serve` stops with this one line."""


def kept_signer(data_dir: Path) -> Signer:
    """The checkpoint signer of this data directory, its key created on first use."""
    path = data_dir / SIGNING_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        descriptor, staging = tempfile.mkstemp(prefix=".ledger-signing-key-", dir=data_dir)
        try:
            with os.fdopen(descriptor, "wb") as file:  # mkstemp: mode 0600
                file.write(pem)
                file.flush()
                os.fsync(file.fileno())
            os.link(staging, path)
        except FileExistsError:
            pass  # another process made it first; use theirs
        finally:
            os.unlink(staging)
    signer = Signer(_read_private_key(path))
    public_path = data_dir / PUBLIC_KEY_FILE
    pem_text = public_key_pem(signer.public_key)
    if not public_path.is_file() or public_path.read_text(encoding="utf-8") != pem_text:
        public_path.write_text(pem_text, encoding="utf-8")
    return signer


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SigningKeyError(f"{path} cannot be opened as a plain file: {exc.strerror}") from None
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode) or status.st_uid != os.geteuid():
            raise SigningKeyError(f"{path} is not a regular file owned by this user")
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o077:
            raise SigningKeyError(
                f"{path} is readable by other users (mode {mode:04o}): run `chmod 600 {path}`"
            )
        data = file.read(MAX_KEY_FILE_BYTES + 1)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key")
    return key
