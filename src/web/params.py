"""Shared, bounded request parameter types (an unbounded integer would overflow the database)."""

from __future__ import annotations

from typing import Annotated

from litestar.params import PathParameter

MAX_ROW_ID = 2**31 - 1

RowId = Annotated[int, PathParameter(ge=1, le=MAX_ROW_ID)]
"""An integer primary key taken from the path."""

ConversationId = Annotated[str, PathParameter(pattern=r"^[0-9A-Za-z-]{1,36}$")]
"""A conversation id (UUID text) taken from the path; anything else is a 400, not a lookup."""
