"""The application services, built once at startup and shared by the Litestar handlers, the
Gradio UI and the CLI: `Services(settings)` then `await services.start()`.

Each service is a plain object with async methods that take an `Identity` and return msgspec
structs, so a Gradio callback and an HTTP handler make the same call. Accessing a service
before `start()` raises, so a wiring mistake fails loudly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from inference import Engine, InferenceSettings, merge_catalog
from inference.catalog import Catalog
from inference.router import InferenceRouter
from ledger import Ledger, LedgerSettings
from web import probes
from web.background import periodic_jobs, run_every
from web.database import create_engine, session_factory, upgrade_schema
from web.default_model import DefaultModelOutcome, load_default_model, start_models
from web.domain.accounts.invites import InvitesService
from web.domain.accounts.registration import RegistrationService
from web.domain.accounts.services import AccountsService
from web.domain.admin.services import AdminService
from web.domain.alerts.service import AlertsService
from web.domain.alerts.webhook import WebhookNotifier, started_webhook
from web.domain.billing.prices import PriceCatalog, load_prices
from web.domain.billing.services import BillingService
from web.domain.budgets.services import BudgetsService
from web.domain.chat.conversations import ConversationsService
from web.domain.chat.service import ChatService
from web.domain.keys.services import ApiKeysService
from web.domain.receipts.keys import kept_signer
from web.domain.receipts.links import ReceiptLinks
from web.domain.receipts.services import ReceiptsService
from web.domain.system.schemas import Readiness
from web.logging import get_logger
from web.settings import Settings
from web.shared_state import SharedState

log = get_logger(__name__)
CLOSE_SETTLEMENTS_TIMEOUT_S = 10.0


@dataclasses.dataclass
class _Started:
    db: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    ledger: Ledger
    engine: InferenceRouter
    accounts: AccountsService
    registration: RegistrationService
    api_keys: ApiKeysService
    conversations: ConversationsService
    chat: ChatService
    billing: BillingService
    admin: AdminService
    receipts: ReceiptsService
    alerts: AlertsService
    webhook: WebhookNotifier | None
    budgets: BudgetsService


class Services:
    """Everything the front ends call. `engine` may be injected (tests share one loaded
    engine); an injected engine is started and closed by its owner, not here. Inference is
    reached through an `InferenceRouter`: local catalog entries on the engine, remote ones on
    the OpenAI-compatible servers their entries name."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        start_engine: bool = True,
        start_background_jobs: bool = True,
        needs_models: bool = True,
    ) -> None:
        self.settings = settings
        self._needs_models = needs_models
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self._injected_engine = engine
        self._start_engine = start_engine
        self._start_background_jobs = start_background_jobs
        self._started: _Started | None = None
        self._jobs: list[asyncio.Task[None]] = []
        self._default_model: asyncio.Task[DefaultModelOutcome] | None = None
        # Limits, slots and the registration shared by every web process (web.shared_state).
        self.shared = SharedState(settings)
        self.user_limiter = self.shared.user_limiter
        self.address_limiter = self.shared.address_limiter
        self.chat_limiter = self.shared.chat_limiter
        self.chat_slots = self.shared.chat_slots

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start once; a second call is a no-op (`ledgerchat serve` starts the services before
        uvicorn, so that a failure is reported before the port opens; the app's lifespan then
        finds them started)."""
        if self._started is not None:
            return
        settings = self.settings
        # First: a key file that cannot be trusted stops the start before anything opens.
        signer = kept_signer(settings.server.data_dir)
        url = settings.database_url
        if url.startswith("sqlite"):
            Path(url.split("///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
        db = create_engine(url, pool_size=settings.database.pool_size)
        try:
            await upgrade_schema(db)
        except BaseException:
            await db.dispose()
            raise
        # The service runs the sweeper itself (web.background) so /metrics counts its releases.
        try:
            ledger = await Ledger.open(
                url, settings=LedgerSettings.from_env(settings.environ), run_sweeper=False
            )
        except BaseException:
            await db.dispose()
            raise
        catalog_path = Path(settings.models.catalog) if settings.models.catalog else None
        if self._injected_engine is not None:
            engine = InferenceRouter.around(self._injected_engine)
        elif not self._needs_models:
            # The CLI's user and key commands load no model: an empty catalog, so a broken
            # model catalog or inference setting does not stop them.
            engine = InferenceRouter(Catalog(()), InferenceSettings())
        else:
            try:
                engine = InferenceRouter(
                    merge_catalog(catalog_path, settings.environ),
                    InferenceSettings.from_env(settings.environ),
                    settings.environ,
                )
            except BaseException:
                await ledger.close()
                await db.dispose()
                raise
        try:
            # Before any model loads: a model without a price stops the start at once.
            prices = self._prices(engine, catalog_path)
            # Before any model loads too: the same prices, catalog and secret as the others.
            if self._needs_models:
                await self.shared.join(engine.catalog, prices)
        except BaseException:
            await ledger.close()
            await db.dispose()
            raise
        if self._injected_engine is None and self._needs_models and self._start_engine:
            # In the background, so the port opens at once: the default model's preparation
            # (a GGUF hashed and, on a first start, converted: minutes) and load, then the
            # other models marked load_at_start. Until it is loaded a chat is refused with
            # `model_loading`; /ready, /api/models and the page show how far it has come.
            self._default_model = asyncio.create_task(
                load_default_model(engine, self.settings.chat.default_model, time.perf_counter())
            )
            self._jobs.append(asyncio.create_task(start_models(engine, self._default_model)))
        sessions = session_factory(db)
        accounts = AccountsService(sessions, ledger, settings.auth, settings.billing)
        conversations = ConversationsService(sessions, settings.chat.conversations_page_size)
        billing = BillingService(sessions, ledger)
        invites = InvitesService(sessions)
        webhook = started_webhook(settings.billing)
        budgets = BudgetsService(sessions, ledger)
        self._started = _Started(
            db=db,
            sessions=sessions,
            ledger=ledger,
            engine=engine,
            accounts=accounts,
            registration=RegistrationService(sessions, accounts, invites, settings.auth),
            api_keys=ApiKeysService(sessions, settings.auth),
            conversations=conversations,
            chat=ChatService(
                sessions,
                ledger,
                engine,
                conversations,
                settings.chat,
                settings.billing,
                prices,
                rate_limiter=self.chat_limiter,
                slots=self.chat_slots,
            ),
            billing=billing,
            admin=AdminService(
                sessions, ledger, accounts, billing, invites, settings.auth, signer.public_key
            ),
            receipts=ReceiptsService(
                sessions,
                ledger,
                signer,
                ReceiptLinks(settings.auth.jwt_secret, settings.billing.receipt_link_ttl_s),
            ),
            alerts=AlertsService(sessions, ledger, budgets, webhook),
            webhook=webhook,
            budgets=budgets,
        )
        self._started.chat.add_settled_listener(self._started.alerts.settled)
        if self._start_background_jobs:
            jobs = periodic_jobs(
                settings,
                ledger,
                sessions,
                checkpoint=self._started.receipts.checkpoint,
                refresh_gauges=self._refresh_gauges,
                renewals=self.shared.renewals(),
            )
            self._jobs += [asyncio.create_task(run_every(*job)) for job in jobs]
        self._loop = asyncio.get_running_loop()
        log.info("services_started", database=db.url.render_as_string(hide_password=True))

    def _prices(self, engine: InferenceRouter, catalog_path: Path | None) -> PriceCatalog:
        """Credit prices (web's billing, not the inference catalog): every model the engine
        offers must have one, or the service does not start."""
        if not len(engine.catalog):
            return PriceCatalog({})
        prices = load_prices(catalog_path)
        prices.check_covers(engine.catalog.ids(), catalog_path)
        return prices

    async def default_model_outcome(self) -> DefaultModelOutcome | None:
        """Wait for the default model's load at start; None when this start loads none (an
        injected engine, the CLI's commands)."""
        task = self._default_model
        return None if task is None else await asyncio.shield(task)

    def begin_shutdown(self) -> None:
        """Shutdown begins (a signal): refuse new chats now; streams that finish within
        LEDGERCHAT_SHUTDOWN_GRACE_S are settled normally, the chat service ends the rest (their
        clients get an `error` event `shutting_down`, their holds are released)."""
        started = self._started
        if started is None or self._shutdown is not None:
            return
        started.chat.begin_shutdown()
        self._shutdown = asyncio.get_running_loop().create_task(self._end_streams_after_grace())

    def begin_shutdown_threadsafe(self) -> None:
        """`begin_shutdown` from a signal handler (which runs outside the event loop's turn)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.begin_shutdown)

    async def _end_streams_after_grace(self) -> None:
        chat = self._require().chat
        if not await chat.wait_idle(self.settings.server.shutdown_grace_s):
            log.warning("shutdown_ending_streams", active=chat.active_streams)
            chat.end_streams()

    async def close(self) -> None:
        """Graceful: refuse new chats, let running streams finish within the grace period
        (counted once, from `begin_shutdown` when a signal started it), end the rest (their
        holds are released), then close the engine and the ledger."""
        started = self._started
        if started is None:
            return
        self.begin_shutdown()
        if self._shutdown is not None:
            await self._shutdown
        jobs: list[asyncio.Task[Any]] = [*self._jobs]
        if self._default_model is not None:
            jobs.append(self._default_model)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        self._default_model = None
        if self._injected_engine is None:
            await started.engine.close()
        else:
            await started.engine.close_remote()
        await started.chat.wait_idle(CLOSE_SETTLEMENTS_TIMEOUT_S)
        await started.chat.wait_settlements(CLOSE_SETTLEMENTS_TIMEOUT_S)
        await self.shared.close()
        await started.alerts.drained()
        if started.webhook is not None:
            await started.webhook.close()
        await started.ledger.close()
        await started.db.dispose()
        self._started = None
        self._shutdown = None
        log.info("services_closed")

    # -- the services --------------------------------------------------------------------
    def _require(self) -> _Started:
        if self._started is None:
            raise RuntimeError("Services.start() has not run (or close() has)")
        return self._started

    @property
    def started(self) -> bool:
        return self._started is not None

    @property
    def accounts(self) -> AccountsService:
        return self._require().accounts

    @property
    def registration(self) -> RegistrationService:
        return self._require().registration

    @property
    def api_keys(self) -> ApiKeysService:
        return self._require().api_keys

    @property
    def conversations(self) -> ConversationsService:
        return self._require().conversations

    @property
    def chat(self) -> ChatService:
        return self._require().chat

    @property
    def alerts(self) -> AlertsService:
        return self._require().alerts

    @property
    def webhook(self) -> WebhookNotifier | None:
        return self._require().webhook

    @property
    def billing(self) -> BillingService:
        return self._require().billing

    @property
    def admin(self) -> AdminService:
        return self._require().admin

    @property
    def receipts(self) -> ReceiptsService:
        return self._require().receipts

    @property
    def budgets(self) -> BudgetsService:
        return self._require().budgets

    @property
    def ledger(self) -> Ledger:
        return self._require().ledger

    @property
    def engine(self) -> InferenceRouter:
        return self._require().engine

    @property
    def db(self) -> AsyncEngine:
        return self._require().db

    # -- probes ------------------------------------------------------------------------
    async def readiness(self) -> Readiness:
        started = self._started
        if started is None:
            return Readiness(False, {"services": "not started"})
        return await probes.readiness(
            started.db, started.ledger, started.engine, self.settings.chat.default_model
        )

    async def _refresh_gauges(self) -> None:
        self.refresh_gauges()

    def refresh_gauges(self) -> None:
        """Bring state gauges up to date just before /metrics renders them."""
        started = self._started
        probes.refresh_gauges(
            None if started is None else started.engine,
            None if started is None else started.chat.active_streams,
        )
