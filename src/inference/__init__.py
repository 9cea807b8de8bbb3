"""Async Gemma 3 inference: the model catalog, offline loading (GGUF converted once), and an
engine that streams tokens with continuous batching of concurrent requests per model.

This package knows nothing about credits: it reports exact token counts and timings so that
the web layer can bill. It never imports `ledger` or `web`."""

from inference.catalog import (
    Catalog,
    CatalogEntry,
    CatalogError,
    ModelSource,
    load_catalog,
    merge_catalog,
)
from inference.engine import Engine, SchedulerLoad
from inference.errors import (
    EngineBusy,
    InferenceError,
    InvalidRequest,
    ModelLoadFailed,
    ModelUnavailable,
    OutOfMemory,
    PromptTooLong,
)
from inference.events import Finished, FinishReason, ModelStatus, StreamEvent, TextDelta, Timings
from inference.requests import ChatMessage, GenerationRequest, PreparedRequest, SamplingParams
from inference.settings import InferenceSettings
from inference.stream import GenerationStream

__all__ = [
    "Catalog",
    "CatalogEntry",
    "CatalogError",
    "ChatMessage",
    "Engine",
    "EngineBusy",
    "FinishReason",
    "Finished",
    "GenerationRequest",
    "GenerationStream",
    "InferenceError",
    "InferenceSettings",
    "InvalidRequest",
    "ModelLoadFailed",
    "ModelSource",
    "ModelStatus",
    "ModelUnavailable",
    "OutOfMemory",
    "PreparedRequest",
    "PromptTooLong",
    "SamplingParams",
    "SchedulerLoad",
    "StreamEvent",
    "TextDelta",
    "Timings",
    "load_catalog",
    "merge_catalog",
]
