"""Three `ledgerchat serve` processes behind nginx (deploy/nginx/ledgerchat.conf as shipped) on
one PostgreSQL database and one `ledgerchat engine serve`: concurrent chats are billed exactly
once whichever process answers, and a process killed mid-stream costs nothing but its own
streams (its holds are released by the others' sweepers)."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from tests.multiproc.cluster import LONG_REPLY_TOKENS, Cluster, wait_until
from tests.multiproc.conftest import GRANT, HOLD_TTL_S, WORKERS
from tests.multiproc.traffic import answered_by, audit, balance, chat, cli, users

USERS = 10
CHATS_PER_USER = 6


async def test_concurrent_chats_over_three_processes_balance_exactly(cluster: Cluster) -> None:
    """60 chats at once from 10 users, each user's credits covering only some of them: every
    process answers some, no balance goes negative, each user's charges plus balance equal the
    credits issued, and `ledgerchat audit` is clean."""
    async with cluster.client() as client:
        accounts = await users(client, [f"many{i}" for i in range(USERS)])
        results = await asyncio.gather(
            *(
                chat(client, headers, f"Hello {n}")
                for headers in accounts.values()
                for n in range(CHATS_PER_USER)
            )
        )
        by_status = Counter(result.status for result in results)
        assert set(by_status) <= {200, 402}, [r.error for r in results if r.status not in (200,)]
        assert by_status[200] > 0 and by_status[402] > 0, by_status
        spread = Counter(result.upstream for result in results)
        assert set(spread) == {web.address for web in cluster.webs}, spread
        completed = [result.done for result in results if result.status == 200]
        assert all(done is not None and done["error"] is None for done in completed), completed
        for done in completed:
            assert done is not None
            assert done["balance"]["available"] >= 0 and done["balance"]["posted"] >= 0

        for name, headers in accounts.items():
            spent = sum(
                result.done["cost_credits"]
                for result, owner in zip(results, _owners(accounts), strict=True)
                if owner == name and result.done is not None
            )
            final = await balance(client, headers)
            assert final["held"] == 0 and final["available"] >= 0, final
            assert spent + final["posted"] == GRANT, (name, spent, final)

    audited = audit(cluster)
    assert audited.returncode == 0, audited.stdout + audited.stderr


def _owners(accounts: dict[str, dict[str, str]]) -> list[str]:
    return [name for name in accounts for _ in range(CHATS_PER_USER)]


async def test_a_process_killed_mid_stream_leaves_the_others_serving(cluster: Cluster) -> None:
    """SIGKILL the process holding a long stream: the client's stream breaks, the two others
    keep answering chats through nginx, the dead process's hold is released by a surviving
    sweeper once it expires, and the audit is clean. The process is restarted afterwards."""
    async with cluster.client() as client:
        (headers,) = (await users(client, ["victim"])).values()
        topped = await asyncio.to_thread(cli, cluster, "user", "topup", "victim", "200")
        assert topped.returncode == 0, topped.stdout + topped.stderr
        victim_stream = client.stream(
            "POST",
            "/api/chat",
            json={"message": "Tell a long story", "sampling": {"max_tokens": LONG_REPLY_TOKENS}},
            headers=headers,
        )
        async with victim_stream as response:
            assert response.status_code == 200
            dead = cluster.web_by_address(answered_by(response))
            lines = response.aiter_lines()
            async for line in lines:  # the hold is placed before the first token is sent
                if line.startswith("event:") and "start" in line:
                    break
            held = await balance(client, headers)
            assert held["held"] > 0, held
            dead.kill()
            try:
                async for _ in lines:
                    pass
            except httpx.HTTPError:
                pass  # the stream broke off: what a client of a dead process sees

        survivors = [web for web in cluster.webs if web is not dead]
        answered = set()
        for n in range(2 * WORKERS):
            result = await chat(client, headers, f"still there {n}")
            assert result.status in (200, 402), result.error
            answered.add(result.upstream)
        assert answered <= {web.address for web in survivors}, answered

        async def released() -> bool:
            return (await balance(client, headers))["held"] == 0

        deadline = asyncio.get_running_loop().time() + float(HOLD_TTL_S) + 90
        while not await released():
            assert asyncio.get_running_loop().time() < deadline, "the dead hold was never swept"
            await asyncio.sleep(0.5)

    audited = audit(cluster)
    assert audited.returncode == 0, audited.stdout + audited.stderr

    replacement = cluster.start_web(dead.port)
    cluster.webs[cluster.webs.index(dead)] = replacement
    cluster.wait_ready(replacement)
    wait_until(replacement.alive, 5, "replacement alive")
