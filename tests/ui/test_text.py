"""What the page shows for service results: escaping, prices, cost lines, notices, sampling."""

from __future__ import annotations

import msgspec
import pytest

from inference.errors import EngineBusy
from web.domain.chat.schemas import BalanceView, ChatCompleted
from web.errors import CreditsExhausted, ValidationFailed
from web.ui.chat import ChatTurn, completion_notice, refusal_notice, validate_sampling
from web.ui.text import (
    PriceTerms,
    ReplyCost,
    balance_html,
    escape_chat_markdown,
    model_choice_label,
    notice_html,
    price_label,
    reply_footer,
)


class TestEscapeChatMarkdown:
    def test_html_outside_code_becomes_text(self) -> None:
        """Tags are escaped so the browser shows them instead of building elements."""
        escaped = escape_chat_markdown('<script>alert(1)</script> <img src=x onerror="y()">')
        assert "<" not in escaped and ">" not in escaped
        assert escaped.startswith("&lt;script&gt;")

    def test_code_spans_and_fences_are_left_for_markdown_to_show_literally(self) -> None:
        """Markdown already shows code verbatim; escaping it would show `&lt;` to the user."""
        text = "see `<b>` and\n```html\n<div>x</div>\n```\nthen <i>"
        escaped = escape_chat_markdown(text)
        assert "`<b>`" in escaped
        assert "```html\n<div>x</div>\n```" in escaped
        assert escaped.endswith("then &lt;i&gt;")

    def test_an_unclosed_fence_while_streaming_is_code_to_the_end(self) -> None:
        """Mid-stream, an opened fence is rendered as code by Markdown, so it stays raw."""
        assert escape_chat_markdown("a < b\n```\n<x>") == "a &lt; b\n```\n<x>"

    def test_ampersands_are_escaped_so_entities_cannot_smuggle_markup(self) -> None:
        assert escape_chat_markdown("&lt;script&gt;") == "&amp;lt;script&amp;gt;"


class TestLabels:
    def test_price_label_leaves_out_zero_terms(self) -> None:
        assert price_label(PriceTerms(0, 0, 0)) == "free"
        assert price_label(PriceTerms(2, 0, 6)) == "2 cr/message + 6 cr/1k reply tokens"

    def test_unavailable_model_label_says_not_installed_not_the_price(self) -> None:
        """End users read that the model is not installed; the operator's reason (paths,
        settings) is shown only where operator detail is asked for."""
        label = model_choice_label("Big", PriceTerms(1, 1, 1), "weights not on this machine")
        assert label == "Big — unavailable: not installed on this server"
        detail = model_choice_label("Big", PriceTerms(1, 1, 1), "weights missing", True)
        assert detail == "Big — unavailable: weights missing"

    def test_price_label_ends_with_the_worked_example(self) -> None:
        """The rates are followed by what a short chat is billed, so '1 cr/message + ...'
        cannot read as less than it costs."""
        label = price_label(PriceTerms(1, 1, 2, example_credits=2))
        assert label == (
            "1 cr/message + 1 cr/1k prompt tokens + 2 cr/1k reply tokens; a 20-word question "
            "(about 30 prompt tokens) with a 100-token reply costs 2 credits "
            "(rounded up once per reply)"
        )
        per_part = price_label(PriceTerms(1, 1, 2, example_credits=3, rounding="per_part"))
        assert per_part.endswith("costs 3 credits (each part rounded up)")

    def test_footer_names_fallback_stop_and_refund(self) -> None:
        """Each unusual settlement is said under the reply."""
        base = dict(cost_credits=3, prompt_tokens=10, completion_tokens=5)
        fallback = reply_footer(
            ReplyCost(**base, model_requested="a", model_answered="b", settlement="captured")
        )
        assert "fallback: `a` was unavailable" in fallback
        stopped = reply_footer(
            ReplyCost(
                **base, model_requested="a", model_answered="a", settlement="partially_captured"
            )
        )
        assert "stopped" in stopped and "3 credits" in stopped
        refunded = reply_footer(
            ReplyCost(
                **base,
                model_requested="a",
                model_answered="a",
                settlement="released",
                release_reason="<engine> failed",
            )
        )
        assert "refunded in full (&lt;engine&gt; failed)" in refunded

    def test_footer_offers_no_receipt_link_the_page_cannot_open(self) -> None:
        """`/api/receipts/...` needs the bearer token the page keeps in script: a plain link
        from the footer would answer 401, so the footer has none."""
        cost = dict(cost_credits=3, prompt_tokens=10, completion_tokens=5)
        terms = dict(model_requested="a", model_answered="a", settlement="captured")
        footer = reply_footer(ReplyCost(**cost, **terms, request_id="0f1e-42"))
        assert "/api/receipts" not in footer
        assert footer.startswith("*") and "3 credits" in footer

    def test_notice_escapes_its_message_and_rejects_unknown_kinds(self) -> None:
        assert "&lt;b&gt;" in notice_html("error", "<b>")
        assert notice_html("info", "") == ""
        with pytest.raises(ValueError, match="notice kind"):
            notice_html("shout", "x")

    def test_balance_badge_carries_the_exact_available_amount(self) -> None:
        badge = balance_html(1234, 5)
        assert 'data-available="1234"' in badge and "1,234" in badge and "5 held" in badge


class TestChatTurn:
    def test_footer_is_kept_out_of_an_unclosed_code_block(self) -> None:
        """A reply stopped inside a fence gets the fence closed before its cost line."""
        turn = ChatTurn(history=[], reply_text="```python\nprint(1)", footer="*1 credit*")
        rendered = turn.render()[-1]["content"]
        assert rendered.endswith("\n```\n\n*1 credit*")


class TestValidateSampling:
    @pytest.mark.parametrize(
        ("temperature", "max_tokens", "field"),
        [
            (-0.1, 10, "temperature"),
            (2.5, 10, "temperature"),
            ("warm", 10, "temperature"),
            (1.0, 0, "max_tokens"),
            (1.0, 101, "max_tokens"),
            (1.0, 1.5, "max_tokens"),
            (1.0, None, "max_tokens"),
        ],
    )
    def test_out_of_range_values_name_their_field(
        self, temperature: object, max_tokens: object, field: str
    ) -> None:
        with pytest.raises(ValidationFailed) as raised:
            validate_sampling(temperature, max_tokens, max_tokens_limit=100)
        assert raised.value.details["field"] == field

    def test_bounds_are_inclusive(self) -> None:
        assert validate_sampling(0, 1, 100).temperature == 0.0
        assert validate_sampling(2, 100.0, 100).max_tokens == 100


class TestChatNotices:
    def test_refusals_say_nothing_was_charged(self) -> None:
        """Insufficient credits names the hold and the balance; busy asks to retry."""
        poor = refusal_notice(
            CreditsExhausted(
                "too expensive", available=7, required=512, price={"per_message_credits": 1}
            )
        )
        assert "512 credits" in poor and "7 credits" in poor and "Nothing was charged" in poor
        assert "lc-notice-warning" in poor
        busy = refusal_notice(EngineBusy("queue full"))
        assert "busy" in busy and "Nothing was charged" in busy

    def test_unexpected_errors_are_not_swallowed(self) -> None:
        with pytest.raises(KeyError):
            refusal_notice(KeyError("bug"))

    def test_a_released_reply_says_its_hold_was_refunded(self) -> None:
        done = _completed(settlement="released", cost_credits=0, release_reason="failed")
        notice = completion_notice(done, stopped=False, chosen_model="big")
        assert "refunded in full" in notice and "12 credits" in notice

    def test_a_fallback_answer_is_announced(self) -> None:
        done = _completed(model_answered="small")
        notice = completion_notice(done, stopped=False, chosen_model="big")
        assert "big was unavailable, so small answered" in notice


def _completed(**changes: object) -> ChatCompleted:
    base = ChatCompleted(
        request_id="r",
        conversation_id="c",
        model_requested="big",
        model_answered="big",
        prompt_tokens=10,
        completion_tokens=5,
        cost_credits=3,
        hold_credits=12,
        price_version="v",
        finish_reason="stop",
        settlement="captured",
        balance=BalanceView(posted=10, held=0, available=10),
    )
    return msgspec.structs.replace(base, **changes)
