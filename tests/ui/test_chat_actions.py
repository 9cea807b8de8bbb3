"""The chat page's model selector against the real catalog service: every model listed by its
short name, unavailable ones saying so (why, for admins only) and refused when chosen anyway,
and the chosen model's price on its own line."""

from __future__ import annotations

from tests.ui.conftest import AVAILABLE_MODEL, GONE_MODEL
from web.services import Services
from web.ui.chat import ChatActions, model_choices
from web.ui.text import NOT_INSTALLED, UNAVAILABLE_MARKER


class TestModelSelector:
    def test_every_catalog_model_is_listed_by_its_short_name(self, services: Services) -> None:
        """The label is the name alone (the price no longer cuts it off); an unavailable
        model says it is not installed."""
        choices = dict(
            (model_id, label) for label, model_id in model_choices(services.chat.models())
        )
        assert choices[AVAILABLE_MODEL] == "Here"
        assert choices[GONE_MODEL] == f"Gone {UNAVAILABLE_MARKER} {NOT_INSTALLED}"

    def test_admins_see_why_a_model_is_unavailable(self, services: Services) -> None:
        """The operator's reason (which path is missing) is shown with operator detail only."""
        end_user = dict(
            (model_id, label) for label, model_id in model_choices(services.chat.models())
        )
        admin = dict(
            (model_id, label)
            for label, model_id in model_choices(services.chat.models(), operator_detail=True)
        )
        assert NOT_INSTALLED not in admin[GONE_MODEL]
        assert admin[GONE_MODEL].startswith(f"Gone {UNAVAILABLE_MARKER} ")
        assert admin[GONE_MODEL] != end_user[GONE_MODEL]
        assert admin[AVAILABLE_MODEL] == "Here"

    def test_the_price_line_gives_rates_and_the_worked_example(self, services: Services) -> None:
        actions = ChatActions(services, max_tokens_limit=64)
        line = actions.price_line(AVAILABLE_MODEL)
        assert line.startswith("**Here**: 1 cr/message")
        assert "a 20-word question" in line and "costs" in line
        assert actions.price_line("no-such-model") == ""

    def test_choosing_an_unavailable_model_goes_back_to_the_default(
        self, services: Services
    ) -> None:
        """The page greys such options out; a choice made anyway is undone with a notice."""
        actions = ChatActions(services, max_tokens_limit=64)
        update, notice, price = actions.check_model(GONE_MODEL)
        assert update["value"] == AVAILABLE_MODEL
        assert "unavailable" in notice and "lc-notice-warning" in notice
        assert price.startswith("**Here**")

    def test_an_available_model_is_kept(self, services: Services) -> None:
        actions = ChatActions(services, max_tokens_limit=64)
        update, notice, price = actions.check_model(AVAILABLE_MODEL)
        assert "value" not in update
        assert "lc-notice-warning" not in notice
        assert price.startswith("**Here**")
