"""The chat stream on the wire: ChatEvents as Server-Sent Events (/api/chat), the error body
of a stream that failed after it began (shared with /v1), and the background task that settles
a chat whose response never started streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar.background_tasks import BackgroundTask
from litestar.response import ServerSentEventMessage

from inference.errors import InferenceError
from ledger.errors import LedgerError
from web.domain.chat.schemas import ChatCompleted, ChatDelta, ChatStarted
from web.domain.chat.turn import PreparedChat
from web.errors import ServiceError
from web.exception_handlers import error_body
from web.logging import get_logger

log = get_logger(__name__)


async def sse_events(prepared: PreparedChat) -> AsyncIterator[ServerSentEventMessage]:
    """start, delta..., done; an error after the stream began becomes an `error` event."""
    try:
        async for event in prepared.events():
            if isinstance(event, ChatDelta):
                name = "delta"
            elif isinstance(event, ChatStarted):
                name = "start"
            else:
                assert isinstance(event, ChatCompleted)
                name = "done"
            yield ServerSentEventMessage(data=msgspec.json.encode(event).decode(), event=name)
    except Exception as exc:
        body = stream_error_body(prepared, exc)
        yield ServerSentEventMessage(data=msgspec.json.encode(body).decode(), event="error")


def stream_error_body(prepared: PreparedChat, exc: Exception) -> dict[str, Any]:
    """Log a stream that ended with an error after it began, and give the error body sent as
    its last event (SSE `error` event here, an error chunk on /v1)."""
    if isinstance(exc, ServiceError | LedgerError | InferenceError):
        # An expected ending (shutting down, ledger busy, engine failure): its code says it.
        log.warning(
            "chat_stream_ended", request_id=prepared.request_id, code=exc.code, error=str(exc)
        )
    else:
        log.exception("chat_stream_failed", request_id=prepared.request_id)
    return error_body(str(getattr(exc, "code", "internal_error")), str(exc))


def settle_unstreamed(prepared: PreparedChat) -> BackgroundTask:
    """Runs once the response is over, however it ended: a client that left before the body
    started never iterates the events, so this releases the hold and frees the key (a no-op
    for a chat that streamed; its own settlement ran)."""
    return BackgroundTask(prepared.cancel)
