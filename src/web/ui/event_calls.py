"""The page's event calls (POST `/gradio_api/queue/join` and `/gradio_api/run/predict`), checked
before Gradio runs them. Gradio answers a call that names no event handler of the page (an
`fn_index` it does not have, or none) with a 500, and a direct call (`run/predict`) with fewer
input values than its handler takes with another 500, as if the server had failed. Both are
the caller's mistake: here they are answered 404 `not_found` and 422 `validation_failed` in the
service's error shape, as is a body that is not a JSON object with an integer `fn_index` and
a `data` list. The body is read here (at most MAX_EVENT_CALL_BODY_BYTES, else 413) and handed
to Gradio unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr
from litestar.types import HTTPRequestEvent, Receive, ReceiveMessage, Send

from web.middleware import send_error

# Bounds what is buffered before Gradio sees it (Litestar's body limit does not reach into the
# mount). Generous: a chat call carries the whole conversation shown on the page.
MAX_EVENT_CALL_BODY_BYTES = 16 * 2**20
DIRECT_CALL_PATH = "/gradio_api/run/predict"


class EventCallRefused(Exception):
    """A call the page's Gradio app would answer with a 500 for the caller's mistake."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def checked_event_call(
    blocks: gr.Blocks, path: str, receive: Receive, send: Send
) -> Receive | None:
    """A `receive` that hands Gradio the call's body again, when the call may run; None when
    it was refused (and answered) or the client left while sending it."""
    try:
        body = await _read_body(receive)
        if body is None:
            return None
        check_event_call(blocks, path, body)
    except EventCallRefused as refused:
        await send_error(send, refused.status, refused.code, refused.message)
        return None
    return _replaying(body, receive)


def check_event_call(blocks: gr.Blocks, path: str, body: bytes) -> None:
    """Raise EventCallRefused unless `body` names an event handler of the page with a backend
    function and, for a direct call, gives it at least as many input values as it takes."""
    try:
        call = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep to decode
        raise EventCallRefused(422, "validation_failed", "the body is not JSON") from None
    if not isinstance(call, dict):
        raise EventCallRefused(422, "validation_failed", "the body must be a JSON object")
    fn_index, data = call.get("fn_index"), call.get("data")
    if not isinstance(fn_index, int) or isinstance(fn_index, bool):
        raise EventCallRefused(422, "validation_failed", "fn_index must be an integer")
    if not isinstance(data, list):
        raise EventCallRefused(422, "validation_failed", "data must be a list")
    handler = _handlers(blocks, call.get("session_hash")).get(fn_index)
    if handler is None or handler.fn is None:
        raise EventCallRefused(
            404, "not_found", f"the page has no server-side event handler {fn_index}"
        )
    if path == DIRECT_CALL_PATH and len(data) < len(handler.inputs):
        raise EventCallRefused(
            422,
            "validation_failed",
            f"event handler {fn_index} takes {len(handler.inputs)} input values, got {len(data)}",
        )


def _handlers(blocks: gr.Blocks, session_hash: object) -> dict[int, Any]:
    """The event handlers a call of this session can name, as Gradio looks them up."""
    sessions: Any = blocks.state_holder  # gradio leaves it untyped
    if isinstance(session_hash, str) and session_hash in sessions:
        handlers: dict[int, Any] = sessions[session_hash].blocks_config.fns
        return handlers
    return blocks.fns


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # http.disconnect: the client left
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_EVENT_CALL_BODY_BYTES:
            raise EventCallRefused(
                413,
                "request_too_large",
                f"an event call's body may be at most {MAX_EVENT_CALL_BODY_BYTES} bytes",
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`body` as one message, then `receive` itself (Gradio listens for the disconnect)."""
    sent = False

    async def replay() -> ReceiveMessage:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return HTTPRequestEvent(type="http.request", body=body, more_body=False)

    return replay
