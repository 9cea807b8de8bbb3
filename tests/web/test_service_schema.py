"""schemathesis against /schema/openapi.json of a live server: generated requests to every
operation never get a 5xx, every answer's status, content type, headers and body are the ones
documented, requests the schema forbids (unknown fields, values past a limit) are refused, and
OPTIONS lists exactly the documented methods. Generation is derandomized and bounded
(MAX_EXAMPLES per operation and mode) so the run is repeatable and stays about a minute."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.web.web_testing import PASSWORD, free_port
from web.app import create_app

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 10
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CHAT_PATHS = ("/api/chat", "/v1/chat/completions")
START_TIMEOUT_S = 60.0


class ThreadedServer:
    """uvicorn with its own event loop in a thread, so schemathesis can drive it with plain
    synchronous requests."""

    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_config=None,
                lifespan="on",
                proxy_headers=False,
            )
        )
        self.base_url = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = threading.Event()
        for _ in range(int(START_TIMEOUT_S / 0.05)):
            if self.server.started:
                return self
            deadline.wait(0.05)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(START_TIMEOUT_S)


@pytest.fixture(scope="module")
def schema_server(tiny_model_dir, tmp_path_factory) -> Iterator[tuple[ThreadedServer, str]]:
    from tests.web.conftest import PRICE, TINY_CAP, TINY_CONTEXT
    from web.settings import load_settings

    tmp = tmp_path_factory.mktemp("schema")
    catalog = tmp / "catalog.toml"
    catalog.write_text(
        f"""
[[models]]
id = "tiny"
display_name = "tiny"
source = {{ kind = "hf_dir", path = "{tiny_model_dir}" }}
dtype = "float32"
device = "cpu"
context_limit_tokens = {TINY_CONTEXT}
max_new_tokens_cap = {TINY_CAP}
{PRICE}
"""
    )
    settings_ = load_settings(
        environ={
            "LEDGERCHAT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'schema.db'}",
            "LEDGERCHAT_CATALOG": str(catalog),
            "LEDGERCHAT_CHAT_DEFAULT_MODEL": "tiny",
            "LEDGERCHAT_CHAT_MAX_MAX_TOKENS": "4",
            "LEDGERCHAT_CHAT_DEFAULT_MAX_TOKENS": "4",
            "LEDGERCHAT_INFERENCE_CACHE_DIR": str(tmp / "cache"),
            "LEDGERCHAT_AUTH_JWT_SECRET": "schema-test-secret-long-enough-for-hs256",
            "LEDGERCHAT_AUTH_ARGON2_TIME_COST": "1",
            "LEDGERCHAT_AUTH_ARGON2_MEMORY_COST_KIB": "1024",
            "LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS": "100000",
            "LEDGERCHAT_RATE_LIMIT_PER_ADDRESS_PER_MINUTE": "1000000",
            "LEDGERCHAT_RATE_LIMIT_PER_USER_PER_MINUTE": "1000000",
            "LEDGERCHAT_RATE_LIMIT_CHAT_PER_USER_PER_MINUTE": "1000000",
            "LEDGERCHAT_LOG_LEVEL": "error",
        },
        env_file=None,
    )
    app = create_app(settings_, mount_ui=False, configure_logs=False)
    with ThreadedServer(app, free_port()) as server:
        with httpx.Client(base_url=server.base_url) as client:
            client.post(
                "/api/auth/register",
                json={"username": "fuzzer", "email": "f@example.com", "password": PASSWORD},
            )
            tokens = client.post(
                "/api/auth/login", json={"username": "fuzzer", "password": PASSWORD}
            ).json()
        yield server, tokens["access_token"]


def _run(operation: Any, mode: GenerationMode, base_url: str, headers: dict[str, str]) -> None:
    if mode is GenerationMode.NEGATIVE:
        # Only bodies are broken on purpose: an unknown query parameter is ignored (as HTTP
        # servers do) and the credentials are the fuzzer's own, so neither is mutated.
        checks = [*CHECKS, negative_data_rejection]
        strategy = operation.as_strategy(generation_mode=mode, query={}, headers=headers)
    else:
        checks, strategy = CHECKS, operation.as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,
    )
    def check(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers)
        if response.status_code == 503 and case.path in CHAT_PATHS:
            return  # the engine's bounded queue refusing work is documented behaviour
        if response.status_code == 413 and mode is GenerationMode.NEGATIVE:
            return  # a body over the size limit is refused too (schemathesis omits 413)
        case.validate_response(response, checks=checks)

    check()


def test_no_server_errors_and_responses_match_schema(schema_server):
    """Every operation, with valid and with invalid generated requests: no 5xx (503 from a
    busy engine excepted), each answer as documented, invalid requests refused with a 4xx.
    Runs as the fuzzer user with plenty of credits."""
    server, token = schema_server
    schema = schemathesis.openapi.from_url(f"{server.base_url}/schema/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/auth/logout":
            continue  # would revoke the fuzzer's own sessions; covered by the auth tests
        _run(operation, GenerationMode.POSITIVE, server.base_url, headers)
        if operation.body:
            _run(operation, GenerationMode.NEGATIVE, server.base_url, headers)
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert "POST /api/chat" in tested and "POST /v1/chat/completions" in tested


def test_options_lists_the_documented_methods(schema_server):
    """OPTIONS on every documented path answers Allow with exactly its documented methods
    (plus OPTIONS itself)."""
    server, _ = schema_server
    document = httpx.get(f"{server.base_url}/schema/openapi.json").json()
    with httpx.Client(base_url=server.base_url) as client:
        for path, item in document["paths"].items():
            concrete = path.replace("{key_id}", "1").replace("{user_id}", "1")
            concrete = concrete.replace("{conversation_id}", "abc").replace("{notice_id}", "1")
            allow = client.options(concrete).headers.get("allow", "")
            documented = {method.upper() for method in item} | {"OPTIONS"}
            assert {m.strip() for m in allow.split(",")} == documented, path


def test_unknown_fields_are_declared_refused(schema_server):
    """The service's own request bodies refuse unknown fields, and the schema says so."""
    server, _ = schema_server
    schemas = httpx.get(f"{server.base_url}/schema/openapi.json").json()["components"]["schemas"]
    for name in ("LoginRequest", "RegisterRequest", "ChatRequest", "SamplingOptions"):
        assert schemas[name]["additionalProperties"] is False, name
    stop = schemas["ChatCompletionRequest"]["properties"]["stop"]["anyOf"]
    assert {"type": "string", "maxLength": 64, "minLength": 1} in stop
