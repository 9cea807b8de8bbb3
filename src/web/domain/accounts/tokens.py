"""Access tokens (HS256 JWT), opaque refresh tokens and API keys, how they are hashed, and the
signing secret kept in the data directory.

Only the SHA-256 of a refresh token or API key is stored, so a database leak does not leak
credentials; the random part has 256 bits, so an unsalted hash is enough. The signing secret,
unless configured, is generated once into `<data_dir>/jwt-secret` (mode 0600), so a restart
keeps everyone signed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import stat
import tempfile
import time
import uuid
from pathlib import Path

import jwt

ALGORITHM = "HS256"
REFRESH_TOKEN_BYTES = 32
API_KEY_PREFIX = "lc-"
API_KEY_BYTES = 32
API_KEY_SHOWN_PREFIX_CHARS = 10
JWT_SECRET_FILE = "jwt-secret"
JWT_SECRET_BYTES = 48


class SecretFileError(Exception):
    """The kept signing secret cannot be used (readable by others, empty); phrased for the
    operator."""


class InvalidToken(Exception):
    """The token is missing, malformed, expired, tampered or of the wrong kind."""


@dataclasses.dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    role: str
    expires_at: int
    session_family: str
    """The sign-in (refresh token family) the token was issued for; revoking it ends the token."""


class AccessTokens:
    def __init__(self, secret: str, ttl_s: int) -> None:
        self._secret = secret or secrets.token_urlsafe(48)
        self.ttl_s = ttl_s

    def issue(self, user_id: int, role: str, session_family: str) -> str:
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "sid": session_family,
            "role": role,
            "typ": "access",
            "iat": now,
            "exp": now + self.ttl_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> AccessClaims:
        try:
            # An explicit algorithm list is what rejects `alg: none` and algorithm confusion.
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "sub", "sid"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        if claims.get("typ") != "access" or not str(claims["sub"]).isdigit():
            raise InvalidToken("not an access token")
        return AccessClaims(
            int(claims["sub"]),
            str(claims.get("role", "user")),
            int(claims["exp"]),
            str(claims["sid"]),
        )


def new_refresh_token() -> str:
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def kept_signing_secret(data_dir: Path) -> str:
    """The signing secret kept in `<data_dir>/jwt-secret`, created on first use.

    The new secret is written to a private temporary file and hard-linked into place: the link
    fails if the file exists, so two processes starting together agree on one secret, and no
    process can read a file that is still being written."""
    path = data_dir / JWT_SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        descriptor, staging = tempfile.mkstemp(prefix=".jwt-secret-", dir=data_dir)  # 0600
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(secrets.token_urlsafe(JWT_SECRET_BYTES) + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.link(staging, path)
        except FileExistsError:
            pass  # another process made it first; use theirs
        finally:
            os.unlink(staging)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    # O_NOFOLLOW and an owner check: anyone who can write to the data directory must not be
    # able to plant a link to a file of theirs and so choose (and know) the signing secret.
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SecretFileError(f"{path} cannot be opened as a plain file: {exc.strerror}") from None
    with os.fdopen(descriptor, encoding="utf-8") as file:
        status = os.fstat(file.fileno())
        mode = stat.S_IMODE(status.st_mode)
        if not stat.S_ISREG(status.st_mode) or status.st_uid != os.geteuid():
            raise SecretFileError(
                f"{path} is not a regular file owned by this user: delete it to generate a new"
                " signing secret, or set LEDGERCHAT_AUTH_JWT_SECRET"
            )
        if mode & 0o077:
            raise SecretFileError(
                f"{path} is readable by other users (mode {mode:04o}): run `chmod 600 {path}`, "
                "or set LEDGERCHAT_AUTH_JWT_SECRET"
            )
        secret = file.read().strip()
    if not secret:
        raise SecretFileError(f"{path} is empty: delete it to generate a new signing secret")
    return secret
