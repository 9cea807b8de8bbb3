"""The chat page's model selector against the real catalog service: every model listed with
its price, unavailable ones with their reason and refused when chosen anyway."""

from __future__ import annotations

from tests.ui.conftest import AVAILABLE_MODEL, GONE_MODEL
from web.services import Services
from web.ui.chat import ChatActions, model_choices
from web.ui.text import UNAVAILABLE_MARKER


class TestModelSelector:
    def test_every_catalog_model_is_listed_with_price_or_reason(self, services: Services) -> None:
        choices = dict(
            (model_id, label) for label, model_id in model_choices(services.chat.models())
        )
        assert AVAILABLE_MODEL in choices and GONE_MODEL in choices
        assert "cr/message" in choices[AVAILABLE_MODEL]
        assert UNAVAILABLE_MARKER not in choices[AVAILABLE_MODEL]
        assert UNAVAILABLE_MARKER in choices[GONE_MODEL]

    def test_choosing_an_unavailable_model_goes_back_to_the_default(
        self, services: Services
    ) -> None:
        """The page greys such options out; a choice made anyway is undone with a notice."""
        actions = ChatActions(services, max_tokens_limit=64)
        update, notice = actions.check_model(GONE_MODEL)
        assert update["value"] == AVAILABLE_MODEL
        assert "unavailable" in notice and "lc-notice-warning" in notice

    def test_an_available_model_is_kept(self, services: Services) -> None:
        actions = ChatActions(services, max_tokens_limit=64)
        update, notice = actions.check_model(AVAILABLE_MODEL)
        assert "value" not in update
        assert "lc-notice-warning" not in notice
