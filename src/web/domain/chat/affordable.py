"""Replies that fit the balance: the largest `max_tokens` whose worst case a caller can pay.

The cost formula (`ModelPrice.cost_credits`) grows with the completion tokens and rounds once
on the total, so the largest affordable count is found exactly by bisection over the formula
itself: no second formula that could disagree with the one that bills."""

from __future__ import annotations

from web.domain.billing.prices import ModelPrice


def largest_affordable_completion(
    price: ModelPrice, prompt_tokens: int, max_tokens: int, affordable_credits: int
) -> int:
    """The most completion tokens in [0, max_tokens] whose cost with `prompt_tokens` is at
    most `affordable_credits`; -1 when not even an empty reply is affordable."""
    if price.cost_credits(prompt_tokens, 0) > affordable_credits:
        return -1
    low, high = 0, max_tokens  # cost(low) is affordable; answer in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        if price.cost_credits(prompt_tokens, middle) <= affordable_credits:
            low = middle
        else:
            high = middle - 1
    return low
