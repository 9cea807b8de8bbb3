"""HTTP handlers of admin actions: /api/admin/* (a signed-in admin; `requires_admin`)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from web.auth import IDENTITY_DEPENDENCY, SECURITY, requires_admin
from web.bodies import strict_json
from web.domain.accounts.invites import CreatedInvite, InviteView
from web.domain.accounts.schemas import Identity, UserView
from web.domain.admin.deps import ADMIN_DEPENDENCIES
from web.domain.admin.refunds import MAX_REFUND_KEY_CHARS, RefundRequest, RefundResult
from web.domain.admin.schemas import (
    MAX_TOPUP_KEY_CHARS,
    AuditResult,
    InviteRequest,
    TopUpRequest,
    TopUpResult,
    UserWithBalance,
)
from web.domain.admin.services import AdminService
from web.domain.admin.usage import AdminUsageReport, usage_csv
from web.domain.admin.usage_keys import KeyUsageReport, key_usage_csv
from web.params import MAX_ROW_ID, RowId

DEPENDENCIES = {**IDENTITY_DEPENDENCY, **ADMIN_DEPENDENCIES}


class AdminController(Controller):
    path = "/api/admin"
    tags = ("admin",)
    dependencies = DEPENDENCIES
    guards = (requires_admin,)
    security = SECURITY

    @post("/users/{user_id:int}/credits", status_code=HTTP_200_OK)
    async def top_up(
        self,
        identity: NamedDependency[Identity],
        admin_service: NamedDependency[AdminService],
        user_id: RowId,
        data: JSONBody[TopUpRequest],
        request: Request[Any, Any, Any],
        idempotency_key: Annotated[
            str,
            HeaderParameter(name="Idempotency-Key", min_length=1, max_length=MAX_TOPUP_KEY_CHARS),
        ],
    ) -> TopUpResult:
        """Add credits to a user; a retry with the same Idempotency-Key adds them once. The
        amount must be a JSON integer (`"10"` and `10.0` are refused)."""
        data = await strict_json(request, TopUpRequest)
        return await admin_service.top_up(
            identity, user_id, data.amount, idempotency_key=idempotency_key, note=data.note
        )

    @post("/refunds", status_code=HTTP_200_OK)
    async def refund(
        self,
        identity: NamedDependency[Identity],
        admin_service: NamedDependency[AdminService],
        data: JSONBody[RefundRequest],
        request: Request[Any, Any, Any],
        idempotency_key: Annotated[
            str,
            HeaderParameter(name="Idempotency-Key", min_length=1, max_length=MAX_REFUND_KEY_CHARS),
        ],
    ) -> RefundResult:
        """Refund all (no `credits`) or part of one reply by its request id, with a reason;
        never more than its capture took minus earlier refunds (409 `refund_exceeds_taken`).
        A retry with the same Idempotency-Key refunds once."""
        data = await strict_json(request, RefundRequest)
        return await admin_service.refund(identity, data, idempotency_key=idempotency_key)

    @get("/usage", responses=None)
    async def usage(
        self,
        identity: NamedDependency[Identity],
        admin_service: NamedDependency[AdminService],
        user: Annotated[str | None, QueryParameter(min_length=1, max_length=50)] = None,
        since: FromQuery[dt.date | None] = None,
        until: FromQuery[dt.date | None] = None,
        output_format: Annotated[Literal["json", "csv"], QueryParameter(name="format")] = "json",
    ) -> Response[AdminUsageReport | str]:
        """Requests, tokens and credits per UTC day, user and model with totals (every user,
        or `user`; default the last 30 days); `format=csv` for a spreadsheet."""
        report = await admin_service.usage(identity, username=user, since=since, until=until)
        if output_format == "csv":
            return Response(
                usage_csv(report),
                media_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
            )
        return Response(report)

    @get("/usage/keys", responses=None)
    async def key_usage(
        self,
        identity: NamedDependency[Identity],
        admin_service: NamedDependency[AdminService],
        user: Annotated[str | None, QueryParameter(min_length=1, max_length=50)] = None,
        key: Annotated[int | None, QueryParameter(ge=1, le=MAX_ROW_ID)] = None,
        since: FromQuery[dt.date | None] = None,
        until: FromQuery[dt.date | None] = None,
        output_format: Annotated[Literal["json", "csv"], QueryParameter(name="format")] = "json",
    ) -> Response[KeyUsageReport | str]:
        """Requests, tokens and credits per UTC day, API key and model, each key's totals and
        the grand totals (every key, a `user`'s, or one `key`; replies from a signed-in
        session are a line with `key_id` null); `format=csv` for a spreadsheet."""
        report = await admin_service.key_usage(
            identity, username=user, key_id=key, since=since, until=until
        )
        if output_format == "csv":
            return Response(
                key_usage_csv(report),
                media_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="usage-keys.csv"'},
            )
        return Response(report)

    @get("/users")
    async def users(
        self, identity: NamedDependency[Identity], admin_service: NamedDependency[AdminService]
    ) -> list[UserWithBalance]:
        """Every user with their balance."""
        return await admin_service.users(identity)

    @post("/users/{user_id:int}/disable", status_code=HTTP_200_OK)
    async def disable(
        self,
        identity: NamedDependency[Identity],
        admin_service: NamedDependency[AdminService],
        user_id: RowId,
    ) -> UserView:
        """The user can no longer sign in; their sessions and API keys are revoked now."""
        return await admin_service.disable(identity, user_id)

    @post("/users/{user_id:int}/enable", status_code=HTTP_200_OK)
    async def enable(
        self,
        identity: NamedDependency[Identity],
        admin_service: NamedDependency[AdminService],
        user_id: RowId,
    ) -> UserView:
        """The user may sign in again; keys revoked by the disable stay revoked."""
        return await admin_service.enable(identity, user_id)

    @post("/invites", status_code=HTTP_201_CREATED)
    async def create_invite(
        self,
        identity: NamedDependency[Identity],
        admin_service: NamedDependency[AdminService],
        data: JSONBody[InviteRequest],
        request: Request[Any, Any, Any],
    ) -> CreatedInvite:
        """A single-use registration code (for LEDGERCHAT_AUTH_REGISTRATION_MODE=invite);
        the code is shown only in this answer."""
        data = await strict_json(request, InviteRequest)
        return await admin_service.create_invite(
            identity, expires_in_s=data.expires_in_s, note=data.note
        )

    @get("/invites")
    async def invites(
        self, identity: NamedDependency[Identity], admin_service: NamedDependency[AdminService]
    ) -> list[InviteView]:
        """The newest invites, used or not (never their codes)."""
        return await admin_service.invites(identity)

    @get("/audit")
    async def audit(
        self, identity: NamedDependency[Identity], admin_service: NamedDependency[AdminService]
    ) -> AuditResult:
        """The ledger audit (replays every account's log) as JSON."""
        return await admin_service.audit(identity)
