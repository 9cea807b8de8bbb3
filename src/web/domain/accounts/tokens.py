"""Access tokens (HS256 JWT), opaque refresh tokens and API keys, and how they are hashed.

Only the SHA-256 of a refresh token or API key is stored, so a database leak does not leak
credentials; the random part has 256 bits, so an unsalted hash is enough.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
import uuid

import jwt

ALGORITHM = "HS256"
REFRESH_TOKEN_BYTES = 32
API_KEY_PREFIX = "lc-"
API_KEY_BYTES = 32
API_KEY_SHOWN_PREFIX_CHARS = 10


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
