"""Service settings: one pydantic-settings model per concern, read once from LEDGERCHAT_*
variables and an optional `.env` file (the process environment always wins). The models and the
web-owned limits live in `web.settings.sections`, reading and checking them in
`web.settings.loading`; everything is imported from here (`from web.settings import X`).
"""

from web.settings.loading import (
    SettingsError,
    check_settings,
    derived_environment,
    env_name,
    load_settings,
    read_environment,
    with_database_url,
)
from web.settings.sections import (
    API_KEY_SCOPES,
    ENV_PREFIX,
    LOG_LEVELS,
    MAX_MESSAGE_CHARS,
    MAX_PASSWORD_CHARS,
    MAX_PASSWORD_STRENGTH,
    MIN_HOLD_TTL_S,
    SECTIONS,
    AuthSettings,
    BillingSettings,
    ChatSettings,
    DatabaseSettings,
    ModelSettings,
    RateLimitSettings,
    RedisSettings,
    Section,
    ServerSettings,
    Settings,
)

__all__ = [
    "API_KEY_SCOPES",
    "ENV_PREFIX",
    "LOG_LEVELS",
    "MAX_MESSAGE_CHARS",
    "MAX_PASSWORD_CHARS",
    "MAX_PASSWORD_STRENGTH",
    "MIN_HOLD_TTL_S",
    "SECTIONS",
    "AuthSettings",
    "BillingSettings",
    "ChatSettings",
    "DatabaseSettings",
    "ModelSettings",
    "RateLimitSettings",
    "RedisSettings",
    "Section",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "check_settings",
    "derived_environment",
    "env_name",
    "load_settings",
    "read_environment",
    "with_database_url",
]
