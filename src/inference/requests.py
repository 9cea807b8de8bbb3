"""What a caller asks of the engine: chat messages, sampling parameters and the request itself,
validated on construction so that a bad request fails with InvalidRequest before any work."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Literal

from inference.errors import InvalidRequest
from inference.settings import InferenceSettings

Role = Literal["user", "assistant", "system"]
ROLES: tuple[Role, ...] = ("user", "assistant", "system")
MAX_STOP_STRINGS = 8
MAX_STOP_STRING_CHARS = 64
MAX_TOP_K = 1_000
MAX_SEED = 2**63 - 1
MAX_REQUEST_ID_CHARS = 128
MAX_DEADLINE_S = 24 * 3600.0
# Below this temperature sampling is greedy: dividing logits by a tinier one overflows to
# inf/NaN, and the distribution is a point mass on the argmax long before that anyway.
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidRequest(f"message role {self.role!r} must be one of {', '.join(ROLES)}")
        if not isinstance(self.content, str):
            raise InvalidRequest("message content must be a string")


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen. temperature 0 (or anything below 1e-5) is greedy (deterministic);
    the defaults are the ones Gemma 3's authors recommend. max_new_tokens None means the
    model's cap."""

    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 64
    max_new_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> SamplingParams:
        """Raise InvalidRequest naming the first field that breaks its rule."""
        if not _is_number(self.temperature) or not 0.0 <= self.temperature <= 2.0:
            raise InvalidRequest(f"temperature={self.temperature!r} must be between 0.0 and 2.0")
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest(f"top_p={self.top_p!r} must be greater than 0.0 and at most 1.0")
        if not _is_int(self.top_k) or not 0 <= self.top_k <= MAX_TOP_K:
            raise InvalidRequest(f"top_k={self.top_k!r} must be an integer 0..{MAX_TOP_K} (0: off)")
        if self.max_new_tokens is not None and (
            not _is_int(self.max_new_tokens) or self.max_new_tokens < 1
        ):
            raise InvalidRequest(f"max_new_tokens={self.max_new_tokens!r} must be at least 1")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise InvalidRequest(f"seed={self.seed!r} must be an integer 0..2**63-1")
        if not isinstance(self.stop, tuple):
            raise InvalidRequest("stop must be a tuple of strings")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequest(f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        for text in self.stop:
            if not isinstance(text, str) or not 1 <= len(text) <= MAX_STOP_STRING_CHARS:
                raise InvalidRequest(
                    f"stop string {text!r} must be a string of 1..{MAX_STOP_STRING_CHARS} chars"
                )
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE


@dataclass(frozen=True)
class GenerationRequest:
    """One chat completion to run. `deadline_s` counts from submission; None means the engine's
    default deadline."""

    model_id: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    deadline_s: float | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if isinstance(self.messages, list):
            object.__setattr__(self, "messages", tuple(self.messages))
        if not isinstance(self.model_id, str) or not self.model_id:
            raise InvalidRequest("model_id must be a non-empty string")
        if not self.messages:
            raise InvalidRequest("a request needs at least one message")
        if not all(isinstance(message, ChatMessage) for message in self.messages):
            raise InvalidRequest("messages must be ChatMessage objects")
        if self.messages[-1].role != "user":
            raise InvalidRequest("the last message must be from the user")
        for index, message in enumerate(self.messages):
            if message.role == "system" and index != 0:
                raise InvalidRequest("a system message is only allowed as the first message")
        if not isinstance(self.sampling, SamplingParams):
            raise InvalidRequest("sampling must be a SamplingParams")
        if self.deadline_s is not None and (
            not _is_number(self.deadline_s) or not 0 < self.deadline_s <= MAX_DEADLINE_S
        ):
            raise InvalidRequest(f"deadline_s={self.deadline_s!r} must be in (0, {MAX_DEADLINE_S}]")
        if not isinstance(self.request_id, str) or not (
            1 <= len(self.request_id) <= MAX_REQUEST_ID_CHARS
        ):
            raise InvalidRequest(f"request_id must be 1..{MAX_REQUEST_ID_CHARS} characters")


@dataclass(frozen=True)
class PreparedRequest:
    """A request checked and tokenized once by `Engine.prepare`: the exact prompt token count
    and the worst-case completion (for credit holds), ready for `Engine.stream` without a
    second tokenization. `model_id` is the model that will answer (a fallback, when the
    requested one cannot load)."""

    request: GenerationRequest
    prompt_ids: tuple[int, ...]
    max_completion_tokens: int
    model_id: str
    fell_back_from: str | None = None
    prompt_token_count: int | None = None
    """Set when the prompt was counted without its ids (a remote engine's /tokenize count)."""

    @property
    def prompt_tokens(self) -> int:
        if self.prompt_token_count is not None:
            return self.prompt_token_count
        return len(self.prompt_ids)


def check_request_limits(request: GenerationRequest, settings: InferenceSettings) -> None:
    """The engine's own limits on a request, checked before it is tokenized (by every backend's
    `prepare`): LEDGERCHAT_INFERENCE_MAX_PROMPT_MESSAGES and _MAX_MESSAGE_CHARS. Raises
    InvalidRequest."""
    if not isinstance(request, GenerationRequest):
        raise InvalidRequest("expected a GenerationRequest")
    if len(request.messages) > settings.max_prompt_messages:
        raise InvalidRequest(f"at most {settings.max_prompt_messages} messages per request")
    for message in request.messages:
        if len(message.content) > settings.max_message_chars:
            raise InvalidRequest(
                f"a message has {len(message.content)} characters; at most "
                f"{settings.max_message_chars} are allowed"
            )


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
