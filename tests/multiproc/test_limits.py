"""Limits and metrics of three web processes behind nginx, counted in one Redis: a user's chat
rate limit is exact whichever process answers, /metrics reports the whole service, and with
Redis stopped a chat is refused (503, Retry-After) and nothing is charged."""

from __future__ import annotations

import asyncio
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from tests.multiproc.cluster import METRICS_TOKEN, Cluster
from tests.multiproc.conftest import CHATS_PER_MINUTE, GRANT, WORKERS
from tests.multiproc.redis_server import RedisServer
from tests.multiproc.traffic import answered_by, balance, chat, cli, users


async def metric_total(cluster: Cluster, name: str, **labels: str) -> float:
    async with cluster.client() as client:
        response = await client.get(
            "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
    assert response.status_code == 200, response.text
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def test_one_users_rate_limit_is_exact_across_processes(cluster: Cluster) -> None:
    """3 x L chats at once from one user: exactly L pass the limiter (answered 200, or 402 when
    the credits ran out) and the rest get 429, though every process answered some."""
    async with cluster.client() as client:
        (headers,) = (await users(client, ["limited"])).values()
        topped = await asyncio.to_thread(cli, cluster, "user", "topup", "limited", "500")
        assert topped.returncode == 0, topped.stdout + topped.stderr
        results = await asyncio.gather(
            *(chat(client, headers, f"burst {n}") for n in range(3 * CHATS_PER_MINUTE))
        )
    by_status = Counter(result.status for result in results)
    assert by_status[429] == 2 * CHATS_PER_MINUTE, (by_status, [r.error for r in results])
    assert by_status[200] + by_status[402] == CHATS_PER_MINUTE, by_status
    assert len({result.upstream for result in results}) == WORKERS, results


async def test_metrics_report_every_process(cluster: Cluster) -> None:
    """/metrics (through nginx: any process answers) counts the requests every process served:
    the totals grow by exactly the requests sent."""
    route = {"method": "GET", "route": "/api/balance"}
    name = "ledgerchat_http_request_duration_seconds_count"
    before = await metric_total(cluster, name, **route)
    chats_before = await metric_total(cluster, "ledgerchat_chat_requests_total")
    sent = 30
    async with cluster.client() as client:
        accounts = await users(client, ["counted1", "counted2"])
        answered: Counter[str] = Counter()
        for n in range(sent):
            response = await client.get("/api/balance", headers=list(accounts.values())[n % 2])
            assert response.status_code == 200
            answered[answered_by(response)] += 1
        chats = [await chat(client, headers, "count me") for headers in accounts.values()]
    assert all(result.status == 200 for result in chats), [r.error for r in chats]
    assert len(answered) == WORKERS, answered
    assert await metric_total(cluster, name, **route) - before == sent
    assert await metric_total(cluster, "ledgerchat_chat_requests_total") - chats_before == len(
        chats
    )


async def test_redis_down_refuses_chat_with_retry_after_and_charges_nothing(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    """Redis stopped: every process answers a chat 503 `limits_unavailable` with Retry-After
    (fail closed, never unlimited), the user's balance is untouched; Redis back, chats pass."""
    async with cluster.client() as client:
        (headers,) = (await users(client, ["redisless"])).values()
        redis_server.stop()
        try:
            results = [await chat(client, headers, f"no redis {n}") for n in range(2 * WORKERS)]
            for result in results:
                assert result.status == 503, result
                assert result.error["error"]["code"] == "limits_unavailable", result.error
            refused = await client.post("/api/chat", json={"message": "retry?"}, headers=headers)
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) > 0
            assert {r.upstream for r in results} == {web.address for web in cluster.webs}
            assert await balance(client, headers) == {
                "posted": GRANT,
                "held": 0,
                "available": GRANT,
            }
        finally:
            redis_server.start()

        async def served() -> bool:
            return (await chat(client, headers, "redis is back")).status == 200

        deadline = asyncio.get_running_loop().time() + 60
        while not await served():
            assert asyncio.get_running_loop().time() < deadline, "chat not served after Redis"
            await asyncio.sleep(0.5)
