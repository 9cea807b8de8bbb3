"""Credit prices, web's billing: the shipped prices, an operator file's `[prices]` tables and
the `price` tables of catalog files written before prices left the inference catalog."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from inference.catalog import load_catalog
from web.domain.billing.prices import ModelPrice, PriceCatalogError, load_prices


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ops.toml"
    path.write_text(text, encoding="utf-8")
    return path


class TestShippedPrices:
    def test_every_shipped_model_has_a_price(self) -> None:
        """The shipped prices cover the shipped catalog, so the service starts without an
        operator file."""
        prices = load_prices()
        prices.check_covers(load_catalog(None, environ={}).ids(), None)
        assert prices.get("gemma-3-270m") == ModelPrice(
            1, 1, 2, ModelPrice.derive_version("gemma-3-270m", 1, 1, 2)
        )

    def test_version_is_derived_and_tracks_prices(self) -> None:
        """Without an explicit version, the version is a hash of id and prices."""
        price = load_prices().get("gemma-3-270m")
        assert price.version == ModelPrice.derive_version(
            "gemma-3-270m",
            price.per_message_credits,
            price.prompt_credits_per_1k_tokens,
            price.completion_credits_per_1k_tokens,
        )
        assert price.version != ModelPrice.derive_version(
            "gemma-3-270m",
            price.per_message_credits + 1,
            price.prompt_credits_per_1k_tokens,
            price.completion_credits_per_1k_tokens,
        )


class TestOperatorPrices:
    def test_prices_section_merges_per_field_and_adds(self, tmp_path: Path) -> None:
        """`[prices."<id>"]` changes the fields it names (a new version follows) and prices
        new models, with an explicit version kept as written."""
        path = write(
            tmp_path,
            """
[prices."gemma-3-270m"]
completion_credits_per_1k_tokens = 9

[prices.local]
per_message_credits = 0
prompt_credits_per_1k_tokens = 0
completion_credits_per_1k_tokens = 0
version = "free-v1"
""",
        )
        default = load_prices().get("gemma-3-270m")
        changed = load_prices(path).get("gemma-3-270m")
        assert changed.completion_credits_per_1k_tokens == 9
        assert changed.per_message_credits == default.per_message_credits
        assert changed.version != default.version
        assert load_prices(path).get("local").version == "free-v1"

    def test_catalog_files_with_price_in_the_entry_keep_working(self, tmp_path: Path) -> None:
        """A `price` table inside a `[[models]]` entry (the layout before prices moved to
        web) is still read, merged per field."""
        path = write(
            tmp_path,
            """
[[models]]
id = "gemma-3-270m"
price = { per_message_credits = 5 }

[[models]]
id = "local"
source = { kind = "hf_dir", path = "models/local" }
price = { per_message_credits = 1, prompt_credits_per_1k_tokens = 2, \
completion_credits_per_1k_tokens = 3 }
""",
        )
        prices = load_prices(path)
        assert prices.get("gemma-3-270m").per_message_credits == 5
        assert prices.get("local") == ModelPrice(
            1, 2, 3, ModelPrice.derive_version("local", 1, 2, 3)
        )

    def test_misspelt_key_is_refused(self, tmp_path: Path) -> None:
        """A misspelt price key is an error naming it, never silently ignored."""
        path = write(tmp_path, '[prices."gemma-3-270m"]\nversoin = "v2"\n')
        with pytest.raises(PriceCatalogError, match=r"\['versoin'\].*allowed: per_message"):
            load_prices(path)

    def test_a_new_model_needs_every_price(self, tmp_path: Path) -> None:
        """A price table of a new model that lacks a field names the model and the field."""
        path = write(tmp_path, "[prices.local]\nper_message_credits = 1\n")
        with pytest.raises(PriceCatalogError, match=r"'local'.*prompt_credits_per_1k_tokens"):
            load_prices(path)

    def test_a_model_without_price_is_refused_naming_where_to_add_it(self, tmp_path: Path) -> None:
        """A catalog model with no price stops the start, saying which table to add."""
        path = write(tmp_path, "")
        with pytest.raises(PriceCatalogError, match=r'local.*\[prices\."local"\].*ops\.toml'):
            load_prices(path).check_covers(["gemma-3-270m", "local"], path)


def price(rounding: str, per_message: int = 1, prompt: int = 1, completion: int = 2) -> ModelPrice:
    return ModelPrice(per_message, prompt, completion, f"v-{rounding}", rounding)  # type: ignore[arg-type]


class TestFormula:
    @pytest.mark.parametrize(
        ("rounding", "rates", "prompt_tokens", "completion_tokens", "credits"),
        [
            # The bundled 270M's price (1 + 1/1k + 2/1k): a short chat.
            ("total", (1, 1, 2), 30, 1, 2),
            ("per_part", (1, 1, 2), 30, 1, 3),
            ("total", (1, 1, 2), 30, 100, 2),
            ("per_part", (1, 1, 2), 30, 100, 3),
            # Exactly a whole credit is not rounded up further.
            ("total", (0, 1, 2), 600, 200, 1),
            ("per_part", (0, 1, 2), 600, 200, 2),
            ("total", (0, 1, 2), 601, 200, 2),
            ("total", (2, 2, 6), 0, 0, 2),
            ("per_part", (2, 2, 6), 0, 0, 2),
            ("total", (10, 10, 40), 1000, 1000, 60),
            ("per_part", (10, 10, 40), 1001, 1, 22),
            ("total", (10, 10, 40), 1001, 1, 21),
            ("total", (0, 0, 0), 5000, 5000, 0),
        ],
    )
    def test_cost_table(
        self,
        rounding: str,
        rates: tuple[int, int, int],
        prompt_tokens: int,
        completion_tokens: int,
        credits: int,
    ) -> None:
        """`total` rounds once, ceil(per message + (prompt x rate + reply x rate) / 1000);
        `per_part` (the first formula) rounds the prompt and reply parts up separately."""
        assert price(rounding, *rates).cost_credits(prompt_tokens, completion_tokens) == credits

    def test_min_charge_of_a_short_chat_at_the_shipped_270m_price(self) -> None:
        """A one-token reply to a short question at the bundled 270M's price costs the
        message credit plus one rounded-up credit (2), not three separately rounded parts."""
        shipped = load_prices().get("gemma-3-270m")
        assert shipped.rounding == "total"
        assert shipped.cost_credits(30, 1) == 2
        assert shipped.example_cost_credits() == 2

    def test_negative_token_counts_are_refused(self) -> None:
        """A negative count is a bug upstream, never a refund."""
        with pytest.raises(ValueError, match="token counts"):
            price("total").cost_credits(-1, 0)

    def test_cost_grows_with_tokens_so_the_worst_case_hold_covers_any_capture(self) -> None:
        """The hold is the cost of the estimated prompt and every allowed reply token; every
        answer within those limits costs no more."""
        for rounding in ("total", "per_part"):
            model_price = price(rounding, 1, 7, 13)
            hold = model_price.cost_credits(123, 400)
            assert all(
                model_price.cost_credits(prompt, reply) <= hold
                for prompt in range(0, 124, 7)
                for reply in range(0, 401, 9)
            )


class TestRoundingVersions:
    def test_rounding_is_part_of_the_derived_version(self) -> None:
        """Rounding once is a new price version; the per-part version of the same rates is
        the hash it always had, so captures recorded with it still name that formula."""
        total = ModelPrice.derive_version("m", 1, 1, 2, "total")
        per_part = ModelPrice.derive_version("m", 1, 1, 2, "per_part")
        assert total != per_part
        legacy = hashlib.sha256(b"m|1|1|2").hexdigest()[:12]
        assert per_part == legacy

    def test_rounding_in_a_table_and_explicit_versions(self, tmp_path: Path) -> None:
        """A table without version rounds once; `rounding = "per_part"` keeps the first
        formula (and its version); an explicit version without rounding keeps per-part, the
        formula it was written for; an unknown rounding is refused."""
        path = write(
            tmp_path,
            """
[prices."gemma-3-1b-it"]
rounding = "per_part"

[prices.pinned]
per_message_credits = 1
prompt_credits_per_1k_tokens = 1
completion_credits_per_1k_tokens = 2
version = "2025-01"

[prices.pinned-total]
per_message_credits = 1
prompt_credits_per_1k_tokens = 1
completion_credits_per_1k_tokens = 2
version = "2026-11"
rounding = "total"
""",
        )
        prices = load_prices(path)
        old = prices.get("gemma-3-1b-it")
        assert old.rounding == "per_part"
        assert old.version == ModelPrice.derive_version("gemma-3-1b-it", 2, 2, 6, "per_part")
        assert old.version != load_prices().get("gemma-3-1b-it").version
        assert prices.get("pinned").rounding == "per_part"
        assert prices.get("pinned").cost_credits(30, 1) == 3
        assert prices.get("pinned-total").cost_credits(30, 1) == 2
        bad = write(tmp_path, '[prices."gemma-3-270m"]\nrounding = "banker"\n')
        with pytest.raises(PriceCatalogError, match="rounding must be one of total, per_part"):
            load_prices(bad)
