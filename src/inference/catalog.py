"""The model catalog: which models exist, where their weights come from, how to load them and
their token limits (credit prices are web's billing, not here). Read from the TOML shipped in
this package, then an operator override file (argument or LEDGERCHAT_CATALOG), then per-entry
env overrides LEDGERCHAT_MODEL_<ID>__<FIELD> (ID upper-cased with '-' and '.' as '_', e.g.
LEDGERCHAT_MODEL_GEMMA_3_270M__LOAD_AT_START=true).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import TypeAdapter, ValidationError

from inference.errors import ModelUnavailable
from inference.prompting import PROMPTING_FIELDS, Prompting, PromptingError, parse_prompting
from inference.remote.source import REMOTE_KEYS, RemoteSource, parse_remote_source

CATALOG_ENV = "LEDGERCHAT_CATALOG"
MODEL_ENV_PREFIX = "LEDGERCHAT_MODEL_"
DEFAULT_CATALOG_PATH = Path(__file__).with_name("default_catalog.toml")

SourceKind = Literal["gguf_package", "gguf_file", "hf_dir", "hf_repo", "remote"]
Quantization = Literal["none", "bnb-int8", "bnb-int4"]
Device = Literal["cpu", "cuda", "auto"]
DType = Literal["bfloat16", "float16", "float32", "auto"]

SOURCE_KINDS: tuple[SourceKind, ...] = ("gguf_package", "gguf_file", "hf_dir", "hf_repo", "remote")
QUANTIZATIONS: tuple[Quantization, ...] = ("none", "bnb-int8", "bnb-int4")
DEVICES: tuple[Device, ...] = ("cpu", "cuda", "auto")
DTYPES: tuple[DType, ...] = ("bfloat16", "float16", "float32", "auto")
MAX_CONTEXT_LIMIT_TOKENS = 1_048_576
MAX_NEW_TOKENS_CAP = 65_536


class CatalogError(ValueError):
    """The catalog file or an override is malformed; the message names the entry and field."""


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from; which of `package`, `path`, `repo_id` is set follows `kind`."""

    kind: SourceKind
    package: str | None = None
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    remote: RemoteSource | None = None
    """Set for kind `remote`: a model another process serves over the OpenAI protocol."""

    @property
    def is_remote(self) -> bool:
        return self.kind == "remote"

    def describe(self) -> str:
        if self.remote is not None:
            urls = ", ".join(self.remote.base_urls)
            return f"remote model {self.remote.model!r} at {urls}"
        if self.kind == "gguf_package":
            return f"GGUF from Python package {self.package}"
        if self.kind == "gguf_file":
            return f"GGUF file {self.path}"
        if self.kind == "hf_dir":
            return f"Hugging Face directory {self.path}"
        return f"Hugging Face repo {self.repo_id} (local cache only)"


@dataclass(frozen=True)
class CatalogEntry:
    """One model the service may offer."""

    id: str
    display_name: str
    source: ModelSource
    quantization: Quantization
    dtype: DType
    device: Device
    context_limit_tokens: int
    """For a remote entry, 0 means: the upstream's /v1/models `max_model_len` (read at run time)."""
    max_new_tokens_cap: int
    load_at_start: bool = False
    fallback_model_id: str | None = None
    fallback_on_v1: bool = False
    """Whether the OpenAI-compatible /v1 may answer with the fallback when this model cannot:
    OpenAI clients name a model and expect that model, so by default /v1 refuses instead."""
    prompting: Prompting = field(default_factory=Prompting)


@dataclass(frozen=True)
class Catalog:
    """Entries by id, in file order."""

    entries: tuple[CatalogEntry, ...]
    _by_id: dict[str, CatalogEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id: dict[str, CatalogEntry] = {}
        for entry in self.entries:
            if entry.id in by_id:
                raise CatalogError(f"model id {entry.id!r} appears twice")
            by_id[entry.id] = entry
        for entry in self.entries:
            fallback = entry.fallback_model_id
            if fallback is not None and fallback not in by_id:
                raise CatalogError(
                    f"{entry.id}: fallback_model_id {fallback!r} is not in the catalog"
                )
            if fallback == entry.id:
                raise CatalogError(f"{entry.id}: a model cannot be its own fallback")
            if fallback is not None and by_id[fallback].source.is_remote != entry.source.is_remote:
                raise CatalogError(
                    f"{entry.id}: fallback_model_id {fallback!r} must be served the same way "
                    "(both local or both remote)"
                )
        object.__setattr__(self, "_by_id", by_id)

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._by_id

    def ids(self) -> list[str]:
        return [entry.id for entry in self.entries]

    def get(self, model_id: str) -> CatalogEntry:
        """The entry, or ModelUnavailable naming the known ids."""
        try:
            return self._by_id[model_id]
        except KeyError:
            raise ModelUnavailable(
                model_id, f"not in the catalog (known: {', '.join(self.ids())})"
            ) from None


def load_catalog(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Catalog:
    """The shipped catalog merged with the operator file (`path`, else $LEDGERCHAT_CATALOG)
    and the per-entry env overrides: for callers without settings of their own (the
    `inference` command line). The web service reads LEDGERCHAT_CATALOG in its settings and
    calls `merge_catalog` with the file, so the variable is read in one place there."""
    env = os.environ if environ is None else environ
    return merge_catalog(path if path is not None else _env_path(env), env)


def merge_catalog(override_path: Path | None, environ: Mapping[str, str]) -> Catalog:
    """The shipped catalog merged with the operator file `override_path` (None: no file; this
    does not look at LEDGERCHAT_CATALOG) and the per-entry overrides in `environ`."""
    raw_entries = _read_entries(DEFAULT_CATALOG_PATH)
    if override_path is not None:
        overrides = _read_entries(override_path)
        seen: set[object] = set()
        for raw in overrides:
            model_id = raw.get("id")
            if isinstance(model_id, str) and model_id in seen:
                raise CatalogError(f"{override_path}: model id {model_id!r} appears twice")
            seen.add(model_id)
        for raw in overrides:
            _merge(raw_entries, raw)
    for raw in raw_entries:
        _apply_env_overrides(raw, environ)
    return Catalog(tuple(_build_entry(raw, override_path) for raw in raw_entries))


def _env_path(env: Mapping[str, str]) -> Path | None:
    value = env.get(CATALOG_ENV)
    return Path(value).expanduser() if value else None


def _read_entries(path: Path) -> list[dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"catalog file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(f"catalog file {path} is not UTF-8 text: {exc}") from None
    except OSError as exc:  # a directory, no permission, ...
        raise CatalogError(f"catalog file {path} cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"catalog file {path} is not valid TOML: {exc}") from exc
    models = data.get("models", [])
    if not isinstance(models, list) or not all(isinstance(item, dict) for item in models):
        raise CatalogError(f"{path}: expected [[models]] tables")
    # `prices` tables are web's billing (read there from the same operator file).
    unknown = set(data) - {"models", *_BILLING_KEYS}
    if unknown:
        raise CatalogError(f"{path}: unknown top-level keys {sorted(unknown)}")
    return [dict(item) for item in models]


def _merge(entries: list[dict[str, Any]], override: dict[str, Any]) -> None:
    model_id = override.get("id")
    if not isinstance(model_id, str):
        raise CatalogError(f"an override entry has no string id: {override}")
    for existing in entries:
        if existing.get("id") == model_id:
            for key, value in override.items():
                # A new source replaces the old one whole (kinds differ).
                existing[key] = value
            return
    entries.append(dict(override))


_ENV_FIELDS = {
    "display_name": str,
    "quantization": str,
    "dtype": str,
    "device": str,
    "context_limit_tokens": int,
    "max_new_tokens_cap": int,
    "load_at_start": bool,
    "fallback_model_id": str,
    "fallback_on_v1": bool,
    "path": Path,
}


def env_key(model_id: str, field_name: str) -> str:
    """The env variable that overrides `field_name` of `model_id`."""
    normalized = model_id.upper().replace("-", "_").replace(".", "_")
    return f"{MODEL_ENV_PREFIX}{normalized}__{field_name.upper()}"


def _apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    model_id = str(raw.get("id", ""))
    for name, kind in _ENV_FIELDS.items():
        key = env_key(model_id, name)
        value = env.get(key)
        if value is None:
            continue
        if kind in (bool, int):
            # pydantic's rules, as for every other setting (booleans: 1/0/true/false/yes/no/on/off).
            try:
                raw[name] = TypeAdapter(kind).validate_python(value)
            except ValidationError as exc:
                expected = "true or false" if kind is bool else "an integer"
                detail = exc.errors()[0]["msg"]
                raise CatalogError(f"{key}={value!r}: expected {expected} ({detail})") from None
        elif name == "path":
            # A path override points the entry at a local directory (or a GGUF file). A
            # relative one is relative to the working directory, like any path given in the
            # environment (made absolute here so it is not read relative to the catalog file).
            local = Path(value).expanduser().absolute()
            kind_name = "gguf_file" if local.suffix == ".gguf" else "hf_dir"
            raw["source"] = {"kind": kind_name, "path": str(local)}
        elif name == "fallback_model_id" and value == "":
            raw[name] = None
        else:
            raw[name] = value


def _build_entry(raw: dict[str, Any], override_path: Path | None) -> CatalogEntry:
    model_id = raw.get("id")
    if not isinstance(model_id, str) or not model_id or len(model_id) > 128:
        raise CatalogError(f"entry without a valid id: {raw}")
    where = f"catalog entry {model_id!r}"
    known = {
        "id", "display_name", "source", "quantization", "dtype", "device",
        "context_limit_tokens", "max_new_tokens_cap", "load_at_start", "fallback_model_id",
        "fallback_on_v1", *_BILLING_KEYS, *PROMPTING_FIELDS,
    }  # fmt: skip
    unknown = set(raw) - known
    if unknown:
        raise CatalogError(f"{where}: unknown fields {sorted(unknown)}")
    source = _build_source(raw.get("source"), where, override_path)
    if source.is_remote and raw.get("context_limit_tokens") is None:
        context_limit = 0  # read from the upstream's /v1/models
    else:
        context_limit = _int_in(raw, "context_limit_tokens", 16, MAX_CONTEXT_LIMIT_TOKENS, where)
    cap = _int_in(raw, "max_new_tokens_cap", 1, MAX_NEW_TOKENS_CAP, where)
    try:
        prompting = parse_prompting(raw, MAX_NEW_TOKENS_CAP)
    except PromptingError as exc:
        raise CatalogError(f"{where}: {exc}") from None
    fallback = raw.get("fallback_model_id")
    if fallback is not None and not isinstance(fallback, str):
        raise CatalogError(f"{where}: fallback_model_id must be a string")
    load_at_start = raw.get("load_at_start", False)
    fallback_on_v1 = raw.get("fallback_on_v1", False)
    for name, flag in (("load_at_start", load_at_start), ("fallback_on_v1", fallback_on_v1)):
        if not isinstance(flag, bool):
            raise CatalogError(f"{where}: {name} must be true or false")
    return CatalogEntry(
        id=model_id,
        display_name=str(raw.get("display_name", model_id)),
        source=source,
        quantization=cast(Quantization, _choice(raw, "quantization", QUANTIZATIONS, "none", where)),
        dtype=cast(DType, _choice(raw, "dtype", DTYPES, "auto", where)),
        device=cast(Device, _choice(raw, "device", DEVICES, "auto", where)),
        context_limit_tokens=context_limit,
        max_new_tokens_cap=cap,
        load_at_start=load_at_start,
        fallback_model_id=fallback,
        fallback_on_v1=fallback_on_v1,
        prompting=prompting,
    )


def _build_source(raw: object, where: str, override_path: Path | None) -> ModelSource:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: source table is required")
    kind = raw.get("kind")
    if kind not in SOURCE_KINDS:
        raise CatalogError(f"{where}: source.kind must be one of {', '.join(SOURCE_KINDS)}")
    _check_keys(raw, _SOURCE_KEYS[kind], f"{where} source (kind {kind})")
    if kind == "remote":
        try:
            remote = parse_remote_source(raw, override_path)
        except ValueError as exc:
            raise CatalogError(f"{where}: {exc}") from None
        return ModelSource(kind="remote", remote=remote)
    if kind == "gguf_package":
        package = raw.get("package")
        if not isinstance(package, str) or not package:
            raise CatalogError(f"{where}: a gguf_package source needs `package`")
        return ModelSource(kind="gguf_package", package=package)
    if kind in ("gguf_file", "hf_dir"):
        path_text = raw.get("path")
        if not isinstance(path_text, str) or not path_text:
            raise CatalogError(f"{where}: a {kind} source needs `path`")
        path = Path(path_text).expanduser()
        if not path.is_absolute() and override_path is not None:
            # Relative paths in an operator file are relative to that file, not to the cwd.
            path = override_path.parent / path
        return ModelSource(kind=cast(SourceKind, kind), path=path)
    repo_id = raw.get("repo_id")
    if not isinstance(repo_id, str) or "/" not in repo_id:
        raise CatalogError(f"{where}: an hf_repo source needs `repo_id` like 'owner/name'")
    revision = raw.get("revision")
    if revision is not None and not isinstance(revision, str):
        raise CatalogError(f"{where}: source.revision must be a string")
    return ModelSource(kind="hf_repo", repo_id=repo_id, revision=revision)


_BILLING_KEYS = ("price", "prices")
"""Keys of a catalog file that belong to web's billing (credit prices): inference skips them."""
_SOURCE_KEYS: dict[str, tuple[str, ...]] = {
    "gguf_package": ("kind", "package"),
    "gguf_file": ("kind", "path"),
    "hf_dir": ("kind", "path"),
    "hf_repo": ("kind", "repo_id", "revision"),
    "remote": REMOTE_KEYS,
}


def _check_keys(raw: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """A misspelt key (e.g. 'revison') must not be silently ignored."""
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise CatalogError(f"{where}: unknown keys {unknown}; allowed: {', '.join(allowed)}")


def _int_in(raw: Mapping[str, Any], name: str, low: int, high: int, where: str) -> int:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CatalogError(f"{where}: {name} must be an integer")
    if not low <= value <= high:
        raise CatalogError(f"{where}: {name}={value} must be between {low} and {high}")
    return value


def _choice(
    raw: Mapping[str, Any], name: str, allowed: tuple[str, ...], default: str, where: str
) -> str:
    value = raw.get(name, default)
    if value not in allowed:
        raise CatalogError(f"{where}: {name}={value!r} must be one of {', '.join(allowed)}")
    return str(value)
