"""Credit prices, web's billing: the shipped prices, an operator file's `[prices]` tables and
the `price` tables of catalog files written before prices left the inference catalog."""

from __future__ import annotations

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
