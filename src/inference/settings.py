"""Inference settings: one pydantic-settings model, every field with a default, a docstring and a
LEDGERCHAT_INFERENCE_* variable, read once by `InferenceSettings.from_env()` (the process
environment over a `.env` file in the working directory). Its loader, `EnvSettings`, is also
the base of `inference.server`'s settings. No other module reads os.environ.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import AfterValidator, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "LEDGERCHAT_INFERENCE_"
# The longest default deadline, as for a request's own deadline_s.
MAX_DEFAULT_DEADLINE_S = 24 * 3600.0
# The web service derives LEDGERCHAT_INFERENCE_CACHE_DIR from LEDGERCHAT_DATA_DIR when that is set.
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "ledgerchat" / "models"

UserPath = Annotated[Path, AfterValidator(Path.expanduser)]


class EnvSettings(BaseSettings):
    """A settings model of this package (`inference.server`'s too): constructing one takes only
    the given values (and defaults); `from_env` reads its `<env_prefix><FIELD>` variables."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,  # NaN compares false with everything: it would disable deadlines
        use_attribute_docstrings=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment is read by `from_env` only, so a test or a benchmark that builds
        settings is not changed by the shell's."""
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Defaults overridden by the model's variables (e.g. LEDGERCHAT_INFERENCE_QUEUE_LIMIT):
        those of the process over those of `.env` (read by pydantic-settings), or only those
        of `environ`. A bad value raises `settings_error`'s one-line error."""
        try:
            return cls(**cls._env_values(environ))
        except ValidationError as exc:
            raise cls.settings_error(exc) from None

    @classmethod
    def settings_error(cls, exc: ValidationError) -> ValueError:
        """The error `from_env` raises for `exc`: one line naming each variable and field."""
        return ValueError(_one_line(exc, cls.model_config.get("env_prefix", "")))

    @classmethod
    def _env_values(cls, environ: Mapping[str, str] | None) -> dict[str, Any]:
        if environ is None:
            return {**DotEnvSettingsSource(cls)(), **EnvSettingsSource(cls)()}
        prefix = cls.model_config.get("env_prefix", "")
        return {
            name: environ[prefix + name.upper()]
            for name in cls.model_fields
            if environ.get(prefix + name.upper(), "") != ""
        }


class InferenceSettings(EnvSettings):
    """How the engine loads models and bounds its work."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)

    cache_dir: UserPath = DEFAULT_CACHE_DIR
    """Where converted models (GGUF dequantized to safetensors) are kept, keyed by source hash."""

    models_dir: UserPath | None = None
    """Optional folder with one Hugging Face model directory per catalog id (`<dir>/<id>`)."""

    hf_cache_dir: UserPath | None = None
    """Hugging Face hub cache for repo ids (offline); None: huggingface_hub's default."""

    queue_limit: int = Field(default=32, ge=1)
    """Requests that may wait per model before new ones fail at once with EngineBusy."""

    max_batch_size: int = Field(default=8, ge=1, le=256)
    """Requests decoded together per model (continuous batching); the rest wait in the queue."""

    default_deadline_s: float = Field(default=300.0, gt=0, le=MAX_DEFAULT_DEADLINE_S)
    """Deadline for a request that names none; it then ends with finish_reason 'timeout'."""

    max_prompt_messages: int = Field(default=256, ge=1)
    """Messages per request; more is an InvalidRequest."""

    max_message_chars: int = Field(default=100_000, ge=1)
    """Characters per message; more is an InvalidRequest (tokenizing huge text is costly)."""

    prefix_cache_bytes: int = Field(default=256 * 2**20, ge=0)
    """Per model, memory for finished conversations' KV caches reused by their next turn; 0: off."""

    prefill_chunk_tokens: int = Field(default=256, ge=16, le=65536)
    """Padded prompt tokens prefilled per scheduler step (chunked prefill): a longer prompt is
    fed over several steps, between decode steps of the running batch."""

    pack_weights: bool = True
    """On CPU, prepack linear weights for oneDNN at load (faster decode; a model whose output
    layer shares the token embedding keeps one extra copy of it: +335 MB for the 270M; bf16 on
    a CPU without bf16 instructions keeps a float32 copy of every layer: +1.07 GB)."""

    screen_output_layer: bool = True
    """On CPUs with AVX-512, where weights are packed, compute a large vocabulary's logits for
    1-4 rows from an int8 copy of the output layer, then every token that could be the best one
    exactly (the best token is the one the exact layer picks; docs/inference.md states the
    tolerance of the others): about 2x faster output layer, +170 MB for the 270M."""

    torch_threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads, fixed; None: each decode step picks one per core this process
    may use or one less, by the times of recent steps (fewer when other processes hold a core)."""


def _one_line(exc: ValidationError, prefix: str) -> str:
    parts = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = f"{prefix}{field.upper()} ({field})" if field else "inference settings"
        parts.append(f"{name}: {error['msg']}, got {error['input']!r}")
    return "; ".join(parts)
