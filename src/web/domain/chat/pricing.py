"""The cost of a chat, from its price: `ModelPrice.cost_credits` is the only formula (billing
owns it). The hold for a request is the same formula applied to its worst case (estimated
prompt + every allowed completion token); the formula grows with both counts, so the capture
of any answer within those limits never exceeds the hold."""

from __future__ import annotations

from web.domain.billing.prices import ModelPrice


def cost_credits(price: ModelPrice, prompt_tokens: int, completion_tokens: int) -> int:
    """What the tokens cost at `price`, with the rounding of that price's version."""
    return price.cost_credits(prompt_tokens, completion_tokens)


def price_as_dict(price: ModelPrice) -> dict[str, int | str]:
    return {
        "per_message_credits": price.per_message_credits,
        "prompt_credits_per_1k_tokens": price.prompt_credits_per_1k_tokens,
        "completion_credits_per_1k_tokens": price.completion_credits_per_1k_tokens,
        "rounding": price.rounding,
        "version": price.version,
    }
