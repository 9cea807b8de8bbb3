"""Sign-in hardening on both backends: usernames unique regardless of case even under
concurrent registration (with a migration that refuses existing duplicates), one lockout budget
per account whether it is named by username or email, a lockout that concurrent requests cannot
overrun, the same password work for unknown names as for real ones, and a bounded logout body."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic import command
from argon2 import PasswordHasher
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from tests.web.web_testing import PASSWORD, login, register
from web.database import alembic_config, create_engine, upgrade_schema

CASE_VARIANTS = ["Bob", "bob", "BOB", "bOb", "boB", "BOb", "bOB", "BoB"]
WRONG = "wrong password 1"
CONCURRENT_LOGINS = 25


async def _scalar(server: Any, sql: str, **params: Any) -> Any:
    async with server.services.db.connect() as connection:
        return (await connection.execute(text(sql), params)).scalar()


class TestCaseInsensitiveUniqueness:
    async def test_concurrent_case_variants_make_one_account(
        self, make_server, make_settings, database_url
    ):
        """Eight simultaneous registrations of Bob, bob, BOB, ... (distinct emails): exactly one
        account exists afterwards, the others get 409 already_exists, and login with any
        spelling reaches that one account."""
        server = await make_server(make_settings(database_url))
        async with server.client() as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/api/auth/register",
                        json={
                            "username": name,
                            "email": f"user{i}@example.com",
                            "password": PASSWORD,
                        },
                    )
                    for i, name in enumerate(CASE_VARIANTS)
                )
            )
            statuses = [response.status_code for response in responses]
            assert statuses.count(201) == 1, [r.text for r in responses]
            assert statuses.count(409) == len(CASE_VARIANTS) - 1, [r.text for r in responses]
            for response in responses:
                if response.status_code == 409:
                    assert response.json()["error"]["code"] == "already_exists"
            winner = next(r.json() for r in responses if r.status_code == 201)
            assert (
                await _scalar(server, "SELECT count(*) FROM users WHERE lower(username)='bob'") == 1
            )
            for spelling in ("bob", "BOB", winner["email"].upper()):
                tokens = await login(client, spelling)
                me = await client.get(
                    "/api/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
                )
                assert me.json()["id"] == winner["id"]

    async def test_email_case_variant_is_refused(self, server):
        """An email differing only in case is the same address: 409."""
        async with server.client() as client:
            await register(client, "carla")
            response = await client.post(
                "/api/auth/register",
                json={"username": "carla2", "email": "CARLA@Example.com", "password": PASSWORD},
            )
            assert response.status_code == 409
            assert response.json()["error"]["code"] == "already_exists"


def _upgrade_to(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def _database_at_0001_with(url: str, users: list[tuple[str, str]]) -> Any:
    engine = create_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade_to, "0001")
        for username, email in users:
            await connection.execute(
                text(
                    "INSERT INTO users (username, email, password_hash, role, created_at) "
                    "VALUES (:u, :e, 'x', 'user', CURRENT_TIMESTAMP)"
                ),
                {"u": username, "e": email},
            )
        await connection.execute(
            text(
                "INSERT INTO login_attempts (username, client_address, succeeded, created_at) "
                "VALUES ('dora@example.com', '127.0.0.1', false, CURRENT_TIMESTAMP)"
            )
        )
    return engine


class TestMigration:
    async def test_existing_case_duplicates_stop_the_migration_by_name(self, database_url):
        """A database that already holds Bob and bob (or two spellings of one email) is not
        silently altered: the upgrade fails naming the duplicates and leaves every row."""
        engine = await _database_at_0001_with(
            database_url,
            [
                ("Bob", "b1@example.com"),
                ("bob", "b2@example.com"),
                ("dora", "dora@example.com"),
                ("dora2", "DORA@example.com"),
                ("fine", "fine@example.com"),
            ],
        )
        try:
            with pytest.raises(Exception, match="case") as failure:
                await upgrade_schema(engine)
            message = str(failure.value)
            for name in ("'Bob'", "'bob'", "'dora@example.com'", "'DORA@example.com'"):
                assert name in message
            assert "'fine'" not in message
            async with engine.connect() as connection:
                count = (await connection.execute(text("SELECT count(*) FROM users"))).scalar()
            assert count == 5
        finally:
            await engine.dispose()

    async def test_existing_database_upgrades_and_keeps_its_attempts(self, database_url):
        """Without duplicates the upgrade succeeds; stored attempts are attributed to their
        account, and the new index refuses a case variant."""
        engine = await _database_at_0001_with(database_url, [("dora", "dora@example.com")])
        try:
            await upgrade_schema(engine)
            async with engine.connect() as connection:
                owner = (
                    await connection.execute(text("SELECT user_id FROM login_attempts"))
                ).scalar()
                dora = (
                    await connection.execute(text("SELECT id FROM users WHERE username='dora'"))
                ).scalar()
            assert owner == dora
            with pytest.raises(IntegrityError):
                async with engine.begin() as connection:
                    await connection.execute(
                        text(
                            "INSERT INTO users (username, email, password_hash, role, created_at) "
                            "VALUES ('DORA', 'd2@example.com', 'x', 'user', CURRENT_TIMESTAMP)"
                        )
                    )
        finally:
            await engine.dispose()


class TestLockoutPerAccount:
    async def test_username_and_email_share_one_budget(self, server):
        """Five wrong passwords as "erin" lock the account; its email is locked too, and so is
        another spelling of the name."""
        limit = server.services.settings.auth.lockout_failures
        async with server.client() as client:
            await register(client, "erin")
            statuses = [
                (
                    await client.post(
                        "/api/auth/login", json={"username": "erin", "password": WRONG}
                    )
                ).status_code
                for _ in range(limit + 1)
            ]
            assert statuses == [401] * limit + [429]
            for name in ("erin@example.com", "ERIN"):
                response = await client.post(
                    "/api/auth/login", json={"username": name, "password": PASSWORD}
                )
                assert response.status_code == 429, name
                assert response.json()["error"]["code"] == "login_locked"

    async def test_unknown_names_are_still_limited(self, server):
        """A name with no account has its own budget, so probing it is limited as well."""
        limit = server.services.settings.auth.lockout_failures
        async with server.client() as client:
            statuses = [
                (
                    await client.post(
                        "/api/auth/login", json={"username": "nobody", "password": WRONG}
                    )
                ).status_code
                for _ in range(limit + 1)
            ]
        assert statuses == [401] * limit + [429]

    async def test_concurrent_wrong_logins_cannot_exceed_the_limit(
        self, make_server, make_settings, database_url
    ):
        """25 simultaneous wrong passwords: at most the configured number are tried (401),
        the rest get 429, and no more failures than that are on record."""
        server = await make_server(make_settings(database_url))
        limit = server.services.settings.auth.lockout_failures
        async with server.client() as client:
            await register(client, "flo")
            responses = await asyncio.gather(
                *(
                    client.post("/api/auth/login", json={"username": "flo", "password": WRONG})
                    for _ in range(CONCURRENT_LOGINS)
                )
            )
            statuses = [response.status_code for response in responses]
            assert set(statuses) <= {401, 429}, statuses
            assert statuses.count(401) <= limit, statuses
            failures = await _scalar(
                server, "SELECT count(*) FROM login_attempts WHERE succeeded = false"
            )
            assert failures == statuses.count(401)
            locked = await client.post(
                "/api/auth/login", json={"username": "flo", "password": PASSWORD}
            )
            assert locked.status_code == (429 if statuses.count(401) == limit else 200)

    async def test_success_still_resets_the_count(self, server):
        """A right password below the limit clears the failures, as before."""
        limit = server.services.settings.auth.lockout_failures
        async with server.client() as client:
            await register(client, "gus")
            for _ in range(limit - 1):
                await client.post("/api/auth/login", json={"username": "gus", "password": WRONG})
            await login(client, "gus@example.com")
            for _ in range(limit - 1):
                await client.post("/api/auth/login", json={"username": "gus", "password": WRONG})
            await login(client, "gus")


class TestTiming:
    async def test_unknown_name_costs_one_argon2_verification(self, server, monkeypatch):
        """A missing user is checked against a dummy hash made with the configured
        parameters, so the answer takes as long as for a real user with a wrong password."""
        hasher = server.services.accounts._passwords._hasher
        verified: list[str] = []
        real_verify = PasswordHasher.verify

        def spy(self: PasswordHasher, password_hash: str, password: str) -> bool:
            verified.append(password_hash)
            return bool(real_verify(self, password_hash, password))

        monkeypatch.setattr(PasswordHasher, "verify", spy)
        async with server.client() as client:
            await register(client, "hal")
            known = await client.post(
                "/api/auth/login", json={"username": "hal", "password": WRONG}
            )
            unknown = await client.post(
                "/api/auth/login", json={"username": "nobody-here", "password": WRONG}
            )
        assert known.status_code == unknown.status_code == 401
        assert known.json()["error"]["message"] == unknown.json()["error"]["message"]
        assert len(verified) == 2
        assert not hasher.check_needs_rehash(verified[1])


class TestLogoutBody:
    @pytest.mark.parametrize("refresh_token", ["", "x" * 201])
    async def test_bad_refresh_token_is_a_validation_error(self, server, refresh_token):
        """An empty or oversized refresh token in the logout body is refused like one sent to
        /api/auth/refresh, not looked up."""
        async with server.client() as client:
            await register(client, "ivy")
            tokens = await login(client, "ivy")
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            logout = await client.post(
                "/api/auth/logout", json={"refresh_token": refresh_token}, headers=headers
            )
            refresh = await client.post("/api/auth/refresh", json={"refresh_token": refresh_token})
        assert refresh.status_code == 400
        assert logout.status_code == refresh.status_code
        assert logout.json()["error"]["code"] == "validation_failed"
