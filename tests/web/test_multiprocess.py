"""Several web processes acting as one service: limits counted together in Redis, a chat refused
(503, nothing charged) when Redis is gone, metrics summed over processes, processes with other
prices refused, and `serve --workers` refusing what cannot work."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.web.conftest import TINY
from tests.web.redis_testing import PrivateRedis, private_redis, redis_env
from tests.web.web_testing import chat, login, register, signed_in
from web.chat_slots import ChatSlots, redis_client
from web.cli import main
from web.errors import TooManyChats
from web.instances import ServedConfigMismatch
from web.metrics import render_metrics
from web.middleware import ROUTE_COOKIE
from web.services import Services

__all__ = ["private_redis", "redis_env"]  # fixtures, imported to be found by pytest

LEASE_EXPIRY_TIMEOUT_S = 20.0


class TestSharedRateLimits:
    async def test_user_limit_is_exact_across_two_app_instances(
        self, make_server, make_settings, redis_env
    ):
        """Two app instances sharing Redis count one user's requests together: with a limit
        of L per minute exactly L requests are accepted, whichever instance answered."""
        limit = 5
        settings = make_settings(**redis_env, LEDGERCHAT_RATE_LIMIT_PER_USER_PER_MINUTE=str(limit))
        first = await make_server(settings, wait_for_model=False)
        second = await make_server(settings, wait_for_model=False)
        async with first.client() as a, second.client() as b:
            headers = await signed_in(a, "shared")
            statuses = []
            for index in range(2 * limit + 2):
                client = a if index % 2 == 0 else b
                response = await client.get("/api/balance", headers=headers)
                statuses.append(response.status_code)
        assert statuses.count(200) == limit, statuses
        assert statuses.count(429) == limit + 2, statuses

    async def test_chat_limit_is_exact_across_two_app_instances(
        self, make_server, make_settings, redis_env
    ):
        """The per-user chat limit, too: L chats accepted over two instances, the rest 429."""
        limit = 2
        settings = make_settings(
            **redis_env, LEDGERCHAT_RATE_LIMIT_CHAT_PER_USER_PER_MINUTE=str(limit)
        )
        first = await make_server(settings)
        second = await make_server(settings)
        async with first.client() as a, second.client() as b:
            headers = await signed_in(a, "chatty")
            statuses = []
            for index in range(limit + 2):
                client = a if index % 2 == 0 else b
                status, _, _ = await chat(client, headers, "hi", sampling={"max_tokens": 1})
                statuses.append(status)
        assert statuses == [200] * limit + [429, 429], statuses


class TestChatSlots:
    async def test_slots_are_shared_and_a_crashed_holder_frees_them(self, settings, redis_env):
        """Two processes' slot counters share one Redis: the limit holds over both; a slot
        given back is free at once; one whose holder stopped renewing (a crash) is free after
        the lease lifetime, not never."""
        shared = settings.redis.model_copy(
            update={
                "url": redis_env["LEDGERCHAT_REDIS_URL"],
                "key_prefix": redis_env["LEDGERCHAT_REDIS_KEY_PREFIX"],
                "lease_ttl_s": 3,
            }
        )
        one = ChatSlots(2, shared, redis_client(shared), max_lease_lifetime_s=600)
        other = ChatSlots(2, shared, redis_client(shared), max_lease_lifetime_s=600)
        first = await one.acquire("7")
        await other.acquire("7")  # never released nor renewed: its process "crashed"
        with pytest.raises(TooManyChats):
            await one.acquire("7")
        await other.acquire("8")  # another user has slots of their own
        first.release()
        await one.close()
        third = await other.acquire("7")
        deadline = time.monotonic() + LEASE_EXPIRY_TIMEOUT_S
        while True:
            await one.renew()  # `one` renews only what it holds: nothing of user 7
            try:
                await one.acquire("7")
                break
            except TooManyChats:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        third.release()
        await other.close()


class TestRedisDown:
    async def test_chat_refused_503_with_retry_after_and_nothing_charged(
        self, make_server, make_settings, private_redis: PrivateRedis
    ):
        """Redis configured but stopped: a chat is refused 503 `limits_unavailable` with
        Retry-After, no hold is placed and nothing is charged; the balance still answers (the
        request limits count in memory meanwhile, never unlimited)."""
        settings = make_settings(LEDGERCHAT_REDIS_URL=private_redis.url)
        server = await make_server(settings)
        async with server.client() as client:
            await register(client, "redisless")
            tokens = await login(client, "redisless")
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            before = (await client.get("/api/balance", headers=headers)).json()
            private_redis.stop()
            async with client.stream(
                "POST", "/api/chat", json={"message": "hello"}, headers=headers
            ) as response:
                await response.aread()
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "limits_unavailable"
            assert int(response.headers["retry-after"]) > 0
            after = await client.get("/api/balance", headers=headers)
            assert after.status_code == 200, after.text
            assert after.json() == before
            assert before["held"] == 0


METRICS_CHILD = """
import sys
from web import metrics
metrics.CHAT_REQUESTS.labels("completed").inc(int(sys.argv[1]))
metrics.ACTIVE_HOLDS.set(int(sys.argv[1]))
print("done", flush=True)
"""


class TestMetricsAcrossProcesses:
    def test_counters_sum_and_live_gauges_follow_live_processes(self, tmp_path: Path):
        """/metrics in multiprocess mode renders every process's values: counters summed;
        a `livesum` gauge summed over live processes only (a dead one's is dropped)."""
        from prometheus_client import multiprocess

        folder = tmp_path / "metrics"
        folder.mkdir()
        env = {"PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": ":".join(sys.path)}
        for count in (3, 4):
            child = subprocess.run(
                [sys.executable, "-c", METRICS_CHILD, str(count)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            assert "done" in child.stdout
        text = render_metrics({"PROMETHEUS_MULTIPROC_DIR": str(folder)}).decode()
        assert 'ledgerchat_chat_requests_total{outcome="completed"} 7.0' in text, text
        assert "ledgerchat_active_holds 7.0" in text, text
        for path in folder.glob("gauge_livesum_*.db"):
            pid = int(path.stem.rsplit("_", 1)[1])
            multiprocess.mark_process_dead(pid, str(folder))
        text = render_metrics({"PROMETHEUS_MULTIPROC_DIR": str(folder)}).decode()
        assert 'ledgerchat_chat_requests_total{outcome="completed"} 7.0' in text, text
        assert "ledgerchat_active_holds 7.0" not in text, text


@pytest.fixture
def changed_catalog(web_catalog: Path, tmp_path: Path) -> Path:
    """The test catalog with another completion price for every model."""
    changed = tmp_path / "changed-catalog.toml"
    old, new = "completion_credits_per_1k_tokens = 100", "completion_credits_per_1k_tokens = 200"
    changed.write_text(web_catalog.read_text().replace(old, new))
    return changed


class TestServedConfig:
    async def test_process_with_other_prices_refuses_to_start(
        self, make_settings, redis_env, changed_catalog: Path
    ):
        """A process whose prices differ from a running process's refuses to start and says
        the prices differ; one with the same prices starts."""
        running = Services(
            make_settings(**redis_env), start_engine=False, start_background_jobs=False
        )
        await running.start()
        try:
            same = Services(
                make_settings(**redis_env), start_engine=False, start_background_jobs=False
            )
            await same.start()
            await same.close()
            other = Services(
                make_settings(**redis_env, LEDGERCHAT_CATALOG=str(changed_catalog)),
                start_engine=False,
                start_background_jobs=False,
            )
            with pytest.raises(ServedConfigMismatch, match="price version"):
                await other.start()
            assert not other.started
        finally:
            await running.close()


class TestServeWorkers:
    def test_several_workers_with_an_in_process_model_refused(
        self, cli_env, redis_env, capsys, monkeypatch
    ):
        """`serve --workers 2` with an in-process model in the catalog stops at once with a
        message naming the model and the way out; nothing starts."""
        for name, value in redis_env.items():
            monkeypatch.setenv(name, value)
        assert main(["serve", "--workers", "2"]) == 2
        error = capsys.readouterr().err
        assert "in-process models" in error and TINY in error, error
        assert "LEDGERCHAT_ALLOW_MODEL_PER_WORKER" in error, error

    def test_several_workers_without_redis_refused(self, cli_env, capsys):
        """Without Redis each process would count limits alone: refused with the reason."""
        assert main(["serve", "--workers", "2"]) == 2
        assert "needs LEDGERCHAT_REDIS_URL" in capsys.readouterr().err


class TestStickyCookie:
    async def test_ui_paths_get_a_route_cookie_once_and_the_api_none(self, server):
        """The UI's sticky-session cookie (what the balancer hashes, since Gradio sets none) is
        given to a browser without one, not again once it has one, and never on the API."""
        async with server.client() as client:
            first = await client.get("/", headers={"cookie": ""})
            cookie = first.headers.get("set-cookie", "")
            assert cookie.startswith(f"{ROUTE_COOKIE}="), first.headers
            assert "HttpOnly" in cookie and "Path=/" in cookie
            value = cookie.split(";", 1)[0]
            again = await client.get("/", headers={"cookie": value})
            assert "set-cookie" not in again.headers
            api = await client.get("/api/models", headers={"cookie": ""})
            assert ROUTE_COOKIE not in api.headers.get("set-cookie", "")
