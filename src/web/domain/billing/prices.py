"""Credit prices of the models, keyed by model id: web's billing owns them, the inference
catalog does not (it knows models, limits and tokens only).

Read from the TOML shipped next to this module, then from the operator's catalog file
(LEDGERCHAT_CATALOG, the same file that adds models): its `[prices."<model id>"]` tables, and,
for catalog files written before prices left inference, a `price` table inside a `[[models]]`
entry. Either merges per field over the shipped price. A price's `version` is recorded with
every capture; without an explicit one it is a hash of the id, the three prices and the
rounding, so any change of price or formula gives a new version.

The cost formula lives here too (`ModelPrice.cost_credits`), integer only: `rounding = "total"`
(the default) rounds once, `ceil(per_message + (prompt x rate + completion x rate) / 1000)`;
`"per_part"` is the first formula, which rounded the prompt and reply parts up separately. A
table with an explicit `version` but no `rounding` keeps `per_part`, the formula that version
was written for, so a version string always names one formula."""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from inference.catalog import CatalogError
from inference.events import ModelStatus

DEFAULT_PRICES_PATH = Path(__file__).with_name("default_prices.toml")
MAX_PRICE_CREDITS = 10**9
PRICE_KEYS = (
    "per_message_credits",
    "prompt_credits_per_1k_tokens",
    "completion_credits_per_1k_tokens",
    "version",
    "rounding",
)
Rounding = Literal["total", "per_part"]
ROUNDINGS: tuple[Rounding, ...] = get_args(Rounding)
EXAMPLE_QUESTION_WORDS = 20
EXAMPLE_PROMPT_TOKENS = 30
"""A 20-word question in Gemma's chat frame, measured with the 270M's tokenizer: 29 tokens."""
EXAMPLE_REPLY_TOKENS = 100


class PriceCatalogError(CatalogError):
    """A price table is malformed or a model has no price; the message names the model."""


@dataclasses.dataclass(frozen=True)
class ModelPrice:
    """Integer credit prices and how they are rounded; `version` changes whenever a price,
    the rounding or the model id changes."""

    per_message_credits: int
    prompt_credits_per_1k_tokens: int
    completion_credits_per_1k_tokens: int
    version: str
    rounding: Rounding = "total"

    @staticmethod
    def derive_version(
        model_id: str,
        per_message: int,
        prompt_per_1k: int,
        completion_per_1k: int,
        rounding: Rounding = "total",
    ) -> str:
        text = f"{model_id}|{per_message}|{prompt_per_1k}|{completion_per_1k}"
        if rounding != "per_part":
            # Per-part prices keep the versions they had before rounding was a field.
            text += f"|rounding={rounding}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def cost_credits(self, prompt_tokens: int, completion_tokens: int) -> int:
        """What `prompt_tokens` in and `completion_tokens` out cost at this price, in whole
        credits, rounded up as `rounding` says; integers only (rates are per 1000 tokens)."""
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError(f"token counts must be >= 0: {prompt_tokens}, {completion_tokens}")
        prompt = prompt_tokens * self.prompt_credits_per_1k_tokens
        completion = completion_tokens * self.completion_credits_per_1k_tokens
        if self.rounding == "per_part":
            return (
                self.per_message_credits + _ceil_thousandths(prompt) + _ceil_thousandths(completion)
            )
        return self.per_message_credits + _ceil_thousandths(prompt + completion)

    def example_cost_credits(self) -> int:
        """The worked example shown with the price: a 20-word question, a 100-token reply."""
        return self.cost_credits(EXAMPLE_PROMPT_TOKENS, EXAMPLE_REPLY_TOKENS)

    def as_dict(self) -> dict[str, int | str]:
        return dataclasses.asdict(self)


def _ceil_thousandths(thousandths: int) -> int:
    """ceil(thousandths / 1000) in integers (no float ever touches an amount)."""
    return -(-thousandths // 1000)


@dataclasses.dataclass(frozen=True)
class PriceCatalog:
    """Prices by model id."""

    prices: Mapping[str, ModelPrice]

    def get(self, model_id: str) -> ModelPrice:
        try:
            return self.prices[model_id]
        except KeyError:
            raise PriceCatalogError(f"model {model_id!r} has no price") from None

    def check_covers(self, model_ids: Iterable[str], where: Path | None) -> None:
        """Every model offered must have a price: refuse to start otherwise."""
        missing = [model_id for model_id in model_ids if model_id not in self.prices]
        if missing:
            file = where or "the operator catalog file (LEDGERCHAT_CATALOG)"
            raise PriceCatalogError(
                f"models without a price: {', '.join(missing)}; add a "
                f'[prices."{missing[0]}"] table to {file}'
            )


def load_prices(operator_path: Path | None = None) -> PriceCatalog:
    """The shipped prices merged with the operator catalog file's."""
    raw = _read(DEFAULT_PRICES_PATH).get("prices", {})
    tables: dict[str, dict[str, Any]] = {key: dict(value) for key, value in raw.items()}
    if operator_path is not None:
        data = _read(operator_path)
        for entry in data.get("models", []):
            # Catalog files written while prices lived in inference keep working.
            if isinstance(entry, dict) and isinstance(entry.get("price"), dict):
                _merge(tables, str(entry.get("id", "")), entry["price"])
        operator_prices = data.get("prices", {})
        if not isinstance(operator_prices, dict):
            raise PriceCatalogError(f'{operator_path}: expected [prices."<model id>"] tables')
        for model_id, table in operator_prices.items():
            if not isinstance(table, dict):
                raise PriceCatalogError(f"{operator_path}: prices.{model_id} must be a table")
            _merge(tables, model_id, table)
    return PriceCatalog({model_id: _build(model_id, t) for model_id, t in tables.items()})


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # The inference catalog reads the same file and reports these in detail.
        raise PriceCatalogError(f"price catalog {path} cannot be read: {exc}") from None


def _merge(tables: dict[str, dict[str, Any]], model_id: str, table: Mapping[str, Any]) -> None:
    where = f"price of {model_id!r}"
    unknown = sorted(set(table) - set(PRICE_KEYS))
    if unknown:
        # A misspelt key (e.g. 'versoin') must not be silently ignored.
        raise PriceCatalogError(
            f"{where}: unknown keys {unknown}; allowed: {', '.join(PRICE_KEYS)}"
        )
    tables[model_id] = {**tables.get(model_id, {}), **table}


def _build(model_id: str, table: Mapping[str, Any]) -> ModelPrice:
    where = f"price of {model_id!r}"
    per_message, prompt, completion = (_credits(table, name, where) for name in PRICE_KEYS[:3])
    version = table.get("version")
    # An explicit version written without `rounding` was written for the per-part formula.
    default_rounding = "total" if version is None else "per_part"
    rounding = table.get("rounding", default_rounding)
    if rounding not in ROUNDINGS:
        raise PriceCatalogError(f"{where}: rounding must be one of {', '.join(ROUNDINGS)}")
    if version is None:
        version = ModelPrice.derive_version(model_id, per_message, prompt, completion, rounding)
    elif not isinstance(version, str) or not version:
        raise PriceCatalogError(f"{where}: version must be a non-empty string")
    return ModelPrice(per_message, prompt, completion, version, rounding)


def _credits(table: Mapping[str, Any], name: str, where: str) -> int:
    value = table.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PriceCatalogError(f"{where}: {name} must be an integer")
    if not 0 <= value <= MAX_PRICE_CREDITS:
        raise PriceCatalogError(
            f"{where}: {name}={value} must be between 0 and {MAX_PRICE_CREDITS}"
        )
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class PricedModel(ModelStatus):
    """A catalog model as it stands now, with the price it is billed at."""

    price: ModelPrice

    @classmethod
    def of(cls, status: ModelStatus, price: ModelPrice) -> PricedModel:
        fields = {field.name: getattr(status, field.name) for field in dataclasses.fields(status)}
        return cls(**fields, price=price)
