"""The chat page's reply actions: send a message and stream the billed reply, Stop, and pick a
model (the conversation sidebar is `web.ui.conversations`). Every rule (prices, holds, what a
stopped reply costs) belongs to the chat service; this module turns its events and errors into
what the page shows.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, cast

import gradio as gr

from inference.errors import EngineBusy, InferenceError, ModelUnavailable
from web.domain.accounts.schemas import Identity
from web.domain.billing.prices import PricedModel
from web.domain.chat.schemas import (
    ChatCompleted,
    ChatDelta,
    ChatEvent,
    ChatStarted,
    SamplingOptions,
)
from web.domain.chat.service import ChatInput
from web.errors import (
    CreditsExhausted,
    ModelLoading,
    RateLimited,
    ServiceError,
    ShuttingDown,
    ValidationFailed,
)
from web.services import Services
from web.ui.session import SessionEnded, UISession, identity
from web.ui.text import (
    NOT_INSTALLED,
    PriceTerms,
    ReplyCost,
    balance_html,
    credits_label,
    escape_chat_markdown,
    model_loading_notice,
    model_option_label,
    model_price_line,
    notice_html,
    reply_footer,
)

# Bounds of the sampling panel; the service re-checks them (and its own max_tokens cap).
TEMPERATURE_MIN = 0.0
TEMPERATURE_MAX = 2.0
MAX_TOKENS_MIN = 1

ChatHistory = list[dict[str, str]]


@dataclass(frozen=True)
class SamplingChoice:
    """Validated values of the sampling panel."""

    temperature: float
    max_tokens: int


def validate_sampling(temperature: Any, max_tokens: Any, max_tokens_limit: int) -> SamplingChoice:
    """Check the panel's values; ValidationFailed names the field and the allowed range."""
    try:
        temperature_value = float(temperature)
    except (TypeError, ValueError):
        raise ValidationFailed("temperature must be a number", field="temperature") from None
    if not TEMPERATURE_MIN <= temperature_value <= TEMPERATURE_MAX:
        raise ValidationFailed(
            f"temperature must be between {TEMPERATURE_MIN} and {TEMPERATURE_MAX}",
            field="temperature",
        )
    try:
        max_tokens_float = float(max_tokens)
    except (TypeError, ValueError):
        raise ValidationFailed(
            "max new tokens must be a whole number", field="max_tokens"
        ) from None
    if not max_tokens_float.is_integer():
        raise ValidationFailed("max new tokens must be a whole number", field="max_tokens")
    max_tokens_value = int(max_tokens_float)
    if not MAX_TOKENS_MIN <= max_tokens_value <= max_tokens_limit:
        raise ValidationFailed(
            f"max new tokens must be between {MAX_TOKENS_MIN} and {max_tokens_limit}",
            field="max_tokens",
        )
    return SamplingChoice(temperature=temperature_value, max_tokens=max_tokens_value)


def price_terms(model: PricedModel) -> PriceTerms:
    return PriceTerms(
        per_message_credits=model.price.per_message_credits,
        prompt_credits_per_1k_tokens=model.price.prompt_credits_per_1k_tokens,
        completion_credits_per_1k_tokens=model.price.completion_credits_per_1k_tokens,
        example_credits=model.price.example_cost_credits(),
        rounding=model.price.rounding,
    )


def model_choices(
    models: list[PricedModel], operator_detail: bool = False
) -> list[tuple[str, str]]:
    """Every catalog model, available or not, as (label, id) for the selector; the operator's
    reason for a missing model only with `operator_detail` (admins)."""
    return [
        (
            model_option_label(
                model.display_name,
                None if model.available else (model.unavailable_reason or "not available"),
                operator_detail,
            ),
            model.id,
        )
        for model in models
    ]


def refusal_notice(error: Exception) -> str:
    """The banner for a chat that was refused before generating (nothing was charged)."""
    if isinstance(error, CreditsExhausted):
        available = int(error.details.get("available", 0))
        required = int(error.details.get("required", 0))
        return notice_html(
            "warning",
            f"Not enough credits: this reply may cost up to {credits_label(required)} and you "
            f"have {credits_label(available)} available. Nothing was charged; lower "
            "'max new tokens', choose a cheaper model, or ask an admin for a top-up.",
        )
    if isinstance(error, EngineBusy):
        return notice_html(
            "warning", "The server is busy right now. Nothing was charged; try again shortly."
        )
    if isinstance(error, ModelUnavailable):
        return notice_html("error", f"That model is {NOT_INSTALLED}; nothing was charged.")
    if isinstance(error, ModelLoading):
        return notice_html("warning", error.message)
    if isinstance(error, ShuttingDown):
        return notice_html("warning", "The server is restarting. Try again in a moment.")
    if isinstance(error, RateLimited):
        return notice_html(
            "warning", f"Too many requests; try again in {error.retry_after_s} seconds."
        )
    if isinstance(error, ServiceError | InferenceError):
        return notice_html("error", error.message)
    raise error


@dataclass
class ChatTurn:
    """The state of one reply while it streams."""

    history: ChatHistory
    reply_text: str = ""
    footer: str = ""

    def render(self) -> ChatHistory:
        content = escape_chat_markdown(self.reply_text)
        if self.footer and content.count("```") % 2 == 1:
            # A reply cut inside a code block: close it so the cost line is not code.
            content += "\n```"
        if self.footer:
            content = f"{content}\n\n{self.footer}" if content else self.footer
        return [*self.history, {"role": "assistant", "content": content}]


class ChatActions:
    """Handlers of the chat page, bound to the application services."""

    def __init__(self, services: Services, max_tokens_limit: int) -> None:
        self._services = services
        self.max_tokens_limit = max_tokens_limit

    async def _identity(self, session: UISession) -> Identity:
        return await identity(session, self._services.accounts)

    def models(self) -> list[PricedModel]:
        return self._services.chat.models()

    def default_model_id(self) -> str:
        return self._services.chat.find_model(None).id

    def model_picker(self, operator_detail: bool) -> tuple[list[tuple[str, str]], str]:
        """The selector's choices and the model chosen at first."""
        return model_choices(self.models(), operator_detail), self.default_model_id()

    def price_line(self, model_id: str | None) -> str:
        """The price of `model_id` as the line under the message box ("" if unknown)."""
        for model in self.models():
            if model.id == model_id:
                return model_price_line(model.display_name, price_terms(model))
        return ""

    def loading_notice(self, model_id: str | None, shown: str | None) -> tuple[str, Any, Any]:
        """The notice by the message box while the chosen model (else the default) is being
        prepared and loaded, and the timer that refreshes it: ticking while it loads, stopped
        once it is not loading. When a loading notice was `shown` and the model is now loaded,
        the chat notice says so (replacing a refusal sent while it loaded). Returns (loading
        notice, timer, chat notice)."""
        wanted = model_id or self.default_model_id()
        for model in self.models():
            if model.id != wanted:
                continue
            if model.loading_percent is not None:
                notice = model_loading_notice(
                    model.display_name, model.loading_percent, model.loading_stage
                )
                return notice, gr.Timer(active=True), gr.skip()
            if shown and model.loaded:
                ready = notice_html("info", f"{model.display_name} is loaded and ready.")
                return "", gr.Timer(active=False), ready
        return "", gr.Timer(active=False), gr.skip()

    async def send(
        self,
        session: UISession,
        message: str,
        model_id: str,
        temperature: Any,
        max_tokens: Any,
        conversation_id: str | None,
        history: ChatHistory,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Stream one reply. Yields (chatbot, input, notice, balance, conversation id)."""
        session.stop_requested = False
        try:
            caller = await self._identity(session)
        except SessionEnded as ended:
            yield (history, message, notice_html("error", ended.message), gr.skip(), gr.skip())
            return
        try:
            sampling = validate_sampling(temperature, max_tokens, self.max_tokens_limit)
            if not message.strip():
                raise ValidationFailed("write a message first", field="message")
        except ValidationFailed as error:
            yield (history, message, notice_html("error", error.message), gr.skip(), gr.skip())
            return
        chat_input = ChatInput(
            model_id=model_id or None,
            message=message,
            conversation_id=conversation_id or None,
            sampling=SamplingOptions(
                temperature=sampling.temperature, max_tokens=sampling.max_tokens
            ),
            idempotency_key=f"ui-{uuid.uuid4()}",
            # The page shortens a reply to fit the credits unless the operator switched it off.
            shrink_to_affordable=self._services.settings.billing.shrink_to_affordable,
        )
        turn = ChatTurn(
            history=[*history, {"role": "user", "content": escape_chat_markdown(message)}]
        )
        yield (turn.render(), "", notice_html("info", ""), gr.skip(), gr.skip())
        try:
            # prepare applies the same per-user chat rate limit as /api/chat and /v1.
            prepared = await self._services.chat.prepare(caller, chat_input)
        except (ServiceError, InferenceError) as error:
            # Nothing was generated or charged: take the message back into the input box.
            yield (history, message, refusal_notice(error), await self._balance(caller), gr.skip())
            return
        completed: ChatCompleted | None = None
        stopped = False
        async with aclosing(_generator(prepared.events())) as events:
            async for event in events:
                if isinstance(event, ChatStarted):
                    conversation_id = event.conversation_id
                    # The hold is placed: the header shows it as held until the reply settles.
                    yield (
                        turn.render(),
                        gr.skip(),
                        gr.skip(),
                        await self._balance(caller),
                        conversation_id,
                    )
                elif isinstance(event, ChatDelta):
                    turn.reply_text += event.text
                    yield (turn.render(), gr.skip(), gr.skip(), gr.skip(), conversation_id)
                    if session.stop_requested:
                        stopped = True
                        break
                elif isinstance(event, ChatCompleted):
                    completed = event
        if stopped:
            # Said here, in the reply's own ordered stream, not by the Stop click's answer:
            # that answer could reach the page after "Stopped" and leave "Stopping…" on screen.
            yield (
                turn.render(),
                gr.skip(),
                notice_html("info", "Stopping…"),
                gr.skip(),
                conversation_id,
            )
            # Closing the stream settled it (billed what was generated): stop() gives that
            # settled outcome.
            completed = await prepared.stop()
        session.stop_requested = False
        if completed is None:
            yield (
                turn.render(),
                gr.skip(),
                notice_html("warning", "The reply ended; its cost will show in your history."),
                await self._balance(caller),
                conversation_id,
            )
            return
        # The model the person chose: the service may already name the fallback as requested.
        chosen_model = model_id or completed.model_requested
        turn.footer = reply_footer(
            ReplyCost(
                cost_credits=completed.cost_credits,
                prompt_tokens=completed.prompt_tokens,
                completion_tokens=completed.completion_tokens,
                model_requested=chosen_model,
                model_answered=completed.model_answered,
                settlement=completed.settlement,
                release_reason=completed.release_reason,
                request_id=completed.request_id,
                max_tokens_shrunk_to=completed.max_tokens_shrunk_to,
                receipt_url=self._services.receipts.links.url(completed.request_id, caller.user_id),
            )
        )
        yield (
            turn.render(),
            gr.skip(),
            completion_notice(completed, stopped, chosen_model),
            balance_html(completed.balance.available, completed.balance.held),
            completed.conversation_id or conversation_id,
        )

    async def _balance(self, caller: Identity) -> str:
        balance = await self._services.billing.balance(caller)
        return balance_html(balance.available, balance.held)

    def request_stop(self, session: UISession) -> None:
        """Ask the streaming reply to stop; it shows "Stopping…" and then "Stopped" itself."""
        session.stop_requested = True

    def check_model(self, model_id: str) -> tuple[Any, str, str]:
        """Unavailable models stay listed but cannot be chosen: fall back to the default.
        Returns (selector, notice, price line)."""
        for model in self.models():
            if model.id == model_id and not model.available:
                # The operator's reason (paths, settings) is for admins and the logs.
                message = f"{model.display_name} is unavailable: {NOT_INSTALLED}."
                default = self.default_model_id()
                return (
                    gr.update(value=default),
                    notice_html("warning", message),
                    self.price_line(default),
                )
        return gr.skip(), notice_html("info", ""), self.price_line(model_id)


def _generator(events: AsyncIterator[ChatEvent]) -> AsyncGenerator[ChatEvent, None]:
    """`PreparedChat.events()` is an async generator typed as an iterator; closing it on Stop
    is what settles a stopped reply, so it must be closable."""
    return cast(AsyncGenerator[ChatEvent, None], events)


def completion_notice(completed: ChatCompleted, stopped: bool, chosen_model: str) -> str:
    """The banner after a reply: refunds, fallbacks and stops are said out loud."""
    if completed.settlement == "released":
        reason = completed.release_reason or completed.error or "the reply failed"
        return notice_html(
            "warning",
            f"The reply did not complete ({reason}); its hold of "
            f"{credits_label(completed.hold_credits)} was refunded in full.",
        )
    if completed.model_answered != chosen_model:
        return notice_html(
            "info",
            f"{chosen_model} was unavailable, so {completed.model_answered} answered "
            f"at its own price ({credits_label(completed.cost_credits)}).",
        )
    if stopped:
        return notice_html(
            "info",
            f"Stopped. Billed {credits_label(completed.cost_credits)} for the "
            f"{completed.completion_tokens} tokens generated.",
        )
    return notice_html("info", "")
