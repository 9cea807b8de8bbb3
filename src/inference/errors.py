"""Errors the inference package raises, one base class with a stable machine-readable `code`.

The web layer maps these to HTTP answers once, at its boundary; nothing here knows about HTTP.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error this package raises on purpose."""

    code = "inference_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(InferenceError):
    """A request or its sampling parameters break a documented rule."""

    code = "invalid_request"


class PromptTooLong(InferenceError):
    """The formatted prompt does not fit the model's context limit."""

    code = "prompt_too_long"

    def __init__(self, prompt_tokens: int, context_limit_tokens: int) -> None:
        super().__init__(
            f"the prompt is {prompt_tokens} tokens; the model's context limit is "
            f"{context_limit_tokens} tokens and at least one must stay free for the answer"
        )
        self.prompt_tokens = prompt_tokens
        self.context_limit_tokens = context_limit_tokens


class ModelUnavailable(InferenceError):
    """The model is unknown, its weights are not on this machine, or it failed to load."""

    code = "model_unavailable"

    def __init__(self, model_id: str, reason: str, how_to_provide: str | None = None) -> None:
        text = f"model {model_id!r} is unavailable: {reason}"
        if how_to_provide:
            text += f" (to provide it: {how_to_provide})"
        super().__init__(text)
        self.model_id = model_id
        self.reason = reason
        self.how_to_provide = how_to_provide


class EngineBusy(InferenceError):
    """The model's waiting queue is full; raised at once instead of queueing without limit."""

    code = "engine_busy"


class ModelLoadFailed(InferenceError):
    """Loading the model's weights raised; the engine keeps serving other models."""

    code = "model_load_failed"

    def __init__(self, model_id: str, error: str) -> None:
        super().__init__(f"model {model_id!r} failed to load: {error}")
        self.model_id = model_id
        self.error = error


class OutOfMemory(InferenceError):
    """Memory ran out while loading or generating; what was taken has been freed."""

    code = "out_of_memory"

    def __init__(self, model_id: str, during: str) -> None:
        super().__init__(
            f"out of memory while {during} model {model_id!r}; its memory was freed. "
            "Try a smaller or more quantized model (e.g. bnb-int4), or fewer concurrent requests."
        )
        self.model_id = model_id
        self.during = during


class UpstreamError(InferenceError):
    """A remote engine (an OpenAI-compatible server) did not answer as it should. Its `code`
    is also the reason a credit hold is released: nothing was generated for the user."""

    code = "engine_error"

    def __init__(self, model_id: str, message: str) -> None:
        super().__init__(f"model {model_id!r}: {message}")
        self.model_id = model_id


class UpstreamUnavailable(UpstreamError):
    """Every URL of the remote engine refused, was unreachable, or answered 5xx/429."""

    code = "engine_unavailable"


class UpstreamTimeout(UpstreamError):
    """The remote engine accepted the request but sent nothing within the read timeout."""

    code = "engine_timeout"


class UpstreamFailed(UpstreamError):
    """The remote engine answered with an error or broke the stream."""

    code = "engine_error"
