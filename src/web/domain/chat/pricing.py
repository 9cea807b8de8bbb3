"""The cost formula, the only place credits are computed from tokens. The hold for a request is
the same formula applied to its worst case (estimated prompt + every allowed completion token).
"""

from __future__ import annotations

import math

from web.domain.billing.prices import ModelPrice


def cost_credits(price: ModelPrice, prompt_tokens: int, completion_tokens: int) -> int:
    """per message + ceil(prompt x rate / 1000) + ceil(completion x rate / 1000)."""
    assert prompt_tokens >= 0 and completion_tokens >= 0
    return (
        price.per_message_credits
        + math.ceil(prompt_tokens * price.prompt_credits_per_1k_tokens / 1000)
        + math.ceil(completion_tokens * price.completion_credits_per_1k_tokens / 1000)
    )


def price_as_dict(price: ModelPrice) -> dict[str, int | str]:
    return {
        "per_message_credits": price.per_message_credits,
        "prompt_credits_per_1k_tokens": price.prompt_credits_per_1k_tokens,
        "completion_credits_per_1k_tokens": price.completion_credits_per_1k_tokens,
        "version": price.version,
    }
