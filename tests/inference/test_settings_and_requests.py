"""Settings from the environment and validation of requests and sampling parameters."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from inference import (
    ChatMessage,
    GenerationRequest,
    InferenceSettings,
    InvalidRequest,
    SamplingParams,
)


class TestSettings:
    def test_env_overrides(self) -> None:
        """LEDGERCHAT_INFERENCE_<FIELD> overrides the default (the web service derives the
        cache directory from LEDGERCHAT_DATA_DIR; the engine reads only its own variables)."""
        settings = InferenceSettings.from_env(
            {
                "LEDGERCHAT_DATA_DIR": "/ignored",
                "LEDGERCHAT_INFERENCE_CACHE_DIR": "/data/models",
                "LEDGERCHAT_INFERENCE_QUEUE_LIMIT": "5",
                "LEDGERCHAT_INFERENCE_DEFAULT_DEADLINE_S": "1.5",
            }
        )
        assert settings.cache_dir == Path("/data/models")
        assert settings.queue_limit == 5
        assert settings.default_deadline_s == 1.5
        assert settings.max_batch_size == InferenceSettings().max_batch_size

    def test_bad_values_are_named(self) -> None:
        """A malformed or out-of-range value is an error naming the variable or field."""
        with pytest.raises(ValueError, match="LEDGERCHAT_INFERENCE_QUEUE_LIMIT"):
            InferenceSettings.from_env({"LEDGERCHAT_INFERENCE_QUEUE_LIMIT": "lots"})
        with pytest.raises(ValueError, match="max_batch_size"):
            InferenceSettings.from_env({"LEDGERCHAT_INFERENCE_MAX_BATCH_SIZE": "0"})


class TestDeadlineSettings:
    @pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "0", "-1", "86401", "1e308"])
    def test_default_deadline_must_be_finite_and_bounded(
        self, raw: str, no_catalog_env: None
    ) -> None:
        with pytest.raises(ValueError, match="default_deadline_s"):
            InferenceSettings.from_env({"LEDGERCHAT_INFERENCE_DEFAULT_DEADLINE_S": raw})

    def test_default_deadline_accepts_up_to_a_day(self, no_catalog_env: None) -> None:
        settings = InferenceSettings.from_env({"LEDGERCHAT_INFERENCE_DEFAULT_DEADLINE_S": "86400"})
        assert settings.default_deadline_s == 86400.0
        with pytest.raises(ValueError):
            InferenceSettings(default_deadline_s=math.nan)


class TestSamplingParams:
    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"temperature": -0.1}, "temperature"),
            ({"temperature": 2.5}, "temperature"),
            ({"temperature": float("nan")}, "temperature"),
            ({"top_p": 0.0}, "top_p"),
            ({"top_k": -1}, "top_k"),
            ({"top_k": 1.5}, "top_k"),
            ({"max_new_tokens": 0}, "max_new_tokens"),
            ({"seed": -3}, "seed"),
            ({"stop": ("",)}, "stop string"),
            ({"stop": tuple(str(i) for i in range(9))}, "at most 8"),
            ({"stop": ["x"]}, "tuple"),
        ],
    )
    def test_invalid(self, fields: dict[str, object], message: str) -> None:
        """Each broken rule is an InvalidRequest naming the field."""
        with pytest.raises(InvalidRequest, match=message) as raised:
            SamplingParams(**fields)  # type: ignore[arg-type]
        assert raised.value.code == "invalid_request"

    def test_valid_edges(self) -> None:
        """The documented bounds themselves are accepted."""
        assert SamplingParams(temperature=0.0).greedy
        assert not SamplingParams(temperature=2.0, top_p=1.0, top_k=0).greedy


class TestGenerationRequest:
    def test_last_message_must_be_user(self) -> None:
        """The model answers a user turn; ending on an assistant turn is invalid."""
        with pytest.raises(InvalidRequest, match="last message"):
            GenerationRequest("m", (ChatMessage("user", "a"), ChatMessage("assistant", "b")))

    def test_system_only_first(self) -> None:
        """A system message is only allowed first."""
        with pytest.raises(InvalidRequest, match="system"):
            GenerationRequest("m", (ChatMessage("user", "a"), ChatMessage("system", "b"),
                                    ChatMessage("user", "c")))  # fmt: skip

    def test_other_rules(self) -> None:
        """Empty messages, bad roles and bad deadlines are rejected."""
        with pytest.raises(InvalidRequest, match="at least one"):
            GenerationRequest("m", ())
        with pytest.raises(InvalidRequest, match="role"):
            ChatMessage("robot", "hi")  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match="deadline_s"):
            GenerationRequest("m", (ChatMessage("user", "a"),), deadline_s=0)
        request = GenerationRequest("m", [ChatMessage("user", "a")])  # type: ignore[arg-type]
        assert isinstance(request.messages, tuple) and request.request_id
