"""Settings: one frozen dataclass read from ``CDS_*`` environment variables or a mapping, validated
in one place (``Settings.validate``).

Nothing else in the package reads ``os.environ``.  Production defaults are strict;
``cds-service serve --dev`` passes a relaxed mapping (see ``DEV_OVERRIDES``).  Card content and
fixtures default to the copies installed with the package (``cds_service/_content``: links to the
checkout's ``cards/`` and ``fixtures/``, which a wheel carries as package data), so an installed
service runs from any directory; ``CDS_CARDS_DIR`` / ``CDS_FIXTURES_DIR`` point elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cds_service.clinical.contract import CardId

ENV_PREFIX = "CDS_"
# In a checkout these resolve to its top-level cards/ and fixtures/; in a wheel they are package data.
PACKAGE_CONTENT_DIR = Path(__file__).resolve().parent / "_content"
DEFAULT_CARDS_DIR = (PACKAGE_CONTENT_DIR / "cards").resolve()
DEFAULT_FIXTURES_DIR = (PACKAGE_CONTENT_DIR / "fixtures").resolve()


class SettingsError(ValueError):
    """A setting is unknown or has a value that cannot be used."""


@dataclasses.dataclass(frozen=True)
class Settings:
    # -- protocol / HTTP ---------------------------------------------------------------
    AUTH: str = "jwt"  # jwt | off
    PUBLIC_BASE_URL: str = ""  # e.g. https://cds.example.org (no trailing slash)
    CONTENT_POLICY: str = "approved-only"  # approved-only | all
    CORS_ORIGINS: str = ""  # comma-separated origins or "*"
    MAX_BODY_BYTES: int = 5 * 1024 * 1024
    MAX_JSON_DEPTH: int = 64
    MAX_PREFETCH_RESOURCES: int = 50_000
    MAX_DRAFT_ORDERS: int = 200
    MAX_STRING_LENGTH: int = 1_000_000
    MAX_FEEDBACK_ITEMS: int = 100
    DEMO: bool = False  # serve /demo (always on with --dev)
    # -- storage -----------------------------------------------------------------------
    DATABASE_URL: str = "sqlite:///var/ivig-cds.sqlite3"
    AUDIT_KEY: str = ""  # HMAC key for patient ids in audit rows; required in production
    AUDIT_QUEUE_SIZE: int = 10_000
    # -- FHIR fallback -----------------------------------------------------------------
    FHIR_SERVERS: str = ""  # comma-separated allowed base URL prefixes, or "*" (any https)
    FHIR_DEADLINE_S: float = 2.0
    FHIR_READ_TIMEOUT_S: float = 1.0
    FHIR_MAX_PAGES: int = 10
    FHIR_MAX_ENTRIES: int = 10_000
    FHIR_MAX_RESPONSE_BYTES: int = 20 * 1024 * 1024
    # -- client authentication (JWT) ----------------------------------------------------
    TRUSTED_ISSUERS: str = ""  # path to a JSON file, or inline JSON
    JWT_ALGORITHMS: str = "ES384,RS384"
    JWT_CLOCK_SKEW_S: int = 60
    JWT_MAX_LIFETIME_S: int = 3600
    JWKS_REFRESH_INTERVAL_S: int = 300
    JWKS_TIMEOUT_S: float = 3.0
    REDIS_URL: str = ""  # jti replay store; empty = the SQL store
    # -- content -----------------------------------------------------------------------
    CARDS_DIR: str = str(DEFAULT_CARDS_DIR)
    FIXTURES_DIR: str = str(DEFAULT_FIXTURES_DIR)
    LOG_LEVEL: str = "INFO"
    # -- workflow: go-live and the clinician's decisions (issue 14) ------------------------
    MODE: str = "live"  # live | shadow
    DISABLED_CARDS: str = ""  # comma-separated card ids never served
    DECISION_MEMORY_HOURS: float = 24.0  # 0 = no decision memory
    # -- production hardening (issue 15) -------------------------------------------------
    PROFILE: str = "production"  # production | development (AUTH=off, audience from request)
    REVIEW_PAGES: str = ""  # on | off; empty: on in the development profile, off otherwise
    REPLAY_TIMEOUT_S: float = 0.5  # longest wait for the jti replay store before refusing
    FEEDBACK_WINDOW_HOURS: float = 72.0  # feedback accepted for cards issued this recently
    AUDIT_4XX_PER_MINUTE: int = 60  # refused calls audited one row each, then one summary row
    CALL_SLOTS: int = 1  # hook calls computing at once per process (waits excluded); 0 = no limit
    STORE_TIMEOUT_S: float = 2.0  # longest wait for the decision memory / issued-card record in a call

    # ---------------------------------------------------------------------------------
    @property
    def cors_origins(self) -> list[str]:
        return [o.strip() for o in self.CORS_ORIGINS.split(",") if o.strip()]

    @property
    def fhir_servers(self) -> list[str]:
        return [s.strip() for s in self.FHIR_SERVERS.split(",") if s.strip()]

    @property
    def jwt_algorithms(self) -> list[str]:
        return [a.strip() for a in self.JWT_ALGORITHMS.split(",") if a.strip()]

    @property
    def disabled_cards(self) -> frozenset[str]:
        return frozenset(c.strip() for c in self.DISABLED_CARDS.split(",") if c.strip())

    @property
    def base_url(self) -> str:
        return self.PUBLIC_BASE_URL.rstrip("/")

    def validate(self) -> None:
        if self.AUTH not in ("jwt", "off"):
            raise SettingsError(f"AUTH must be 'jwt' or 'off', not {self.AUTH!r}")
        if self.CONTENT_POLICY not in ("approved-only", "all"):
            raise SettingsError(f"CONTENT_POLICY must be 'approved-only' or 'all', not {self.CONTENT_POLICY!r}")
        if self.PUBLIC_BASE_URL and not self.PUBLIC_BASE_URL.startswith(("http://", "https://")):
            raise SettingsError("PUBLIC_BASE_URL must be an absolute http(s) URL")
        for name in ("MAX_BODY_BYTES", "MAX_JSON_DEPTH", "MAX_PREFETCH_RESOURCES", "MAX_DRAFT_ORDERS",
                     "MAX_STRING_LENGTH", "MAX_FEEDBACK_ITEMS", "FHIR_MAX_PAGES", "FHIR_MAX_ENTRIES",
                     "FHIR_MAX_RESPONSE_BYTES", "AUDIT_QUEUE_SIZE", "FHIR_DEADLINE_S", "JWT_MAX_LIFETIME_S",
                     "JWKS_TIMEOUT_S"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive")
        for name in ("JWT_CLOCK_SKEW_S", "JWKS_REFRESH_INTERVAL_S"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} may not be negative")
        if self.FHIR_READ_TIMEOUT_S <= 0:
            raise SettingsError("FHIR_READ_TIMEOUT_S must be positive")
        for alg in self.jwt_algorithms:
            if alg.upper() == "NONE" or alg.upper().startswith("HS"):
                raise SettingsError(f"JWT_ALGORITHMS may not contain {alg!r} (no 'none', no symmetric algorithms)")
        self._validate_workflow()
        self._validate_hardening()

    def _validate_workflow(self) -> None:
        if self.MODE not in ("live", "shadow"):
            raise SettingsError(f"MODE must be 'live' or 'shadow', not {self.MODE!r}")
        known = {card_id.value for card_id in CardId}
        unknown = sorted(self.disabled_cards - known)
        if unknown:
            raise SettingsError(f"DISABLED_CARDS names unknown card id(s) {', '.join(map(repr, unknown))}; "
                                f"known card ids: {', '.join(sorted(known))}")
        if self.DECISION_MEMORY_HOURS < 0:
            raise SettingsError("DECISION_MEMORY_HOURS may not be negative (0 turns decision memory off)")


    # -- production hardening (issue 15) -------------------------------------------------
    @property
    def development(self) -> bool:
        """The development profile, chosen explicitly (``serve --dev`` or ``CDS_PROFILE=development``)."""
        return self.PROFILE == "development"

    @property
    def review_pages(self) -> bool:
        """``/review`` served: ``REVIEW_PAGES`` when set, else only in the development profile."""
        if self.REVIEW_PAGES:
            return self.REVIEW_PAGES == "on"
        return self.development

    def _validate_hardening(self) -> None:
        if self.PROFILE not in ("production", "development"):
            raise SettingsError(f"PROFILE must be 'production' or 'development', not {self.PROFILE!r}")
        if self.REVIEW_PAGES not in ("", "on", "off"):
            raise SettingsError(f"REVIEW_PAGES must be 'on' or 'off', not {self.REVIEW_PAGES!r}")
        for name in ("REPLAY_TIMEOUT_S", "FEEDBACK_WINDOW_HOURS", "AUDIT_4XX_PER_MINUTE", "STORE_TIMEOUT_S"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive")
        if self.CALL_SLOTS < 0:
            raise SettingsError("CALL_SLOTS must be 0 (no limit) or more")

    def production_problems(self) -> list[str]:
        """What stops these settings from serving outside the development profile (empty: fine).

        Production means ``AUTH=jwt``: ``AUTH=off`` needs the development profile; the JWT
        audience comes from ``PUBLIC_BASE_URL``, never from request headers; audit rows need a
        real ``AUDIT_KEY`` shared by every worker and replica.  Checked by ``create_app``, so every
        entry point (``serve``, the image's gunicorn command, any WSGI file) refuses the same.
        """
        if self.development:
            return []
        problems = []
        if self.AUTH != "jwt":
            problems.append("AUTH=off is refused outside the development profile; use `cds-service serve --dev` "
                            "or CDS_PROFILE=development (never in production), or configure CDS_TRUSTED_ISSUERS")
            return problems
        if not self.PUBLIC_BASE_URL:
            problems.append("PUBLIC_BASE_URL is required with AUTH=jwt: it is the JWT audience (the URL clients "
                            "call, e.g. https://cds.example.org); request headers are never trusted for it")
        key = self.AUDIT_KEY.strip()
        if not key:
            problems.append("AUDIT_KEY is required with AUTH=jwt (at least 32 characters, shared by every "
                            "replica), e.g. `openssl rand -hex 32`")
        elif len(key) < 32:
            problems.append("AUDIT_KEY must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        elif _placeholder(key):
            problems.append("AUDIT_KEY is a placeholder; generate one, e.g. `openssl rand -hex 32`")
        return problems


_PLACEHOLDER_WORDS = ("change-me", "changeme", "change_me", "replace-me", "replaceme", "placeholder",
                      "example", "secret", "your-key", "xxxxxxxx", "todo")


def _placeholder(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _PLACEHOLDER_WORDS) or len(set(lowered)) < 8


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}

# What ``serve --dev`` relaxes: no client auth, all content, CORS *, the demo page,
# any https FHIR server.  Storage stays the SQLite default under ./var/.
DEV_OVERRIDES: dict[str, Any] = {
    "PROFILE": "development",
    "AUTH": "off",
    "CONTENT_POLICY": "all",
    "CORS_ORIGINS": "*",
    "DEMO": True,
    "FHIR_SERVERS": "*",
    "LOG_LEVEL": "INFO",
}


def _coerce(name: str, raw: Any) -> Any:
    field_type = _FIELDS[name].type
    if field_type in ("bool", bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{name} must be a boolean, not {raw!r}")
    if field_type in ("int", int):
        try:
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{name} must be an integer, not {raw!r}") from None
    if field_type in ("float", float):
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{name} must be a number, not {raw!r}") from None
    if raw is None:
        return ""
    return str(raw)


def load_settings(config: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``CDS_*`` environment variables, overridden by ``config`` keys.

    ``config`` keys are the environment names without the ``CDS_`` prefix; an unknown
    key is an error (a typo must not silently fall back to a default).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in _FIELDS:
        if ENV_PREFIX + name in env:
            values[name] = _coerce(name, env[ENV_PREFIX + name])
    for key, raw in (config or {}).items():
        if key not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise SettingsError(f"unknown setting {key!r}; known settings: {known}")
        values[key] = _coerce(key, raw)
    settings = Settings(**values)
    settings.validate()
    return settings


DESCRIPTIONS: dict[str, str] = {
    "AUTH": "`jwt` (verify the CDS client's JWT on every /cds-services call) or `off` (development and tests only)",
    "PUBLIC_BASE_URL": "base URL clients use (JWT `aud`, card `source.url`); set it behind a proxy",
    "CONTENT_POLICY": "`approved-only` (serve only approved, unchanged, in-date cards) or `all` "
                      "(dev: unapproved cards marked pending)",
    "CORS_ORIGINS": "comma-separated allowed browser origins, or `*`; empty = no CORS headers",
    "MAX_BODY_BYTES": "larger request bodies get 413",
    "MAX_JSON_DEPTH": "deeper JSON nesting gets 400",
    "MAX_PREFETCH_RESOURCES": "more prefetched resources in one call get 400",
    "MAX_DRAFT_ORDERS": "more draftOrders entries get 400",
    "MAX_STRING_LENGTH": "longer JSON strings get 400",
    "MAX_FEEDBACK_ITEMS": "more items in one feedback call get 400",
    "DEMO": "serve the integrators' demo page at /demo (always on with `serve --dev`)",
    "DATABASE_URL": "feedback and audit store (SQLAlchemy URL; `postgresql+psycopg://…` for PostgreSQL)",
    "AUDIT_KEY": ("HMAC key for patient ids in audit rows; required with AUTH=jwt (32+ characters, same on "
                  "every replica; random per process in development when empty)"),
    "AUDIT_QUEUE_SIZE": "audit records queued for the background writer before new ones are counted as lost",
    "FHIR_SERVERS": "allow-list of FHIR base URL prefixes the service may query, or `*` (any https)",
    "FHIR_DEADLINE_S": "total time budget for FHIR queries in one call (seconds)",
    "FHIR_READ_TIMEOUT_S": "longest silence allowed from a FHIR server while connecting or reading "
                           "(seconds); the whole fetch still ends at FHIR_DEADLINE_S",
    "FHIR_MAX_PAGES": "at most this many pages followed per prefetch key",
    "FHIR_MAX_ENTRIES": "at most this many entries read per prefetch key",
    "FHIR_MAX_RESPONSE_BYTES": "FHIR responses larger than this are cut off (the key fails)",
    "TRUSTED_ISSUERS": "trusted CDS clients: path to a JSON file or inline JSON mapping each issuer to "
                       "`jwks_url` or `jwks`, optional `jku_allow` and `tenants`",
    "JWT_ALGORITHMS": "accepted client JWT algorithms (never `none` or HS*)",
    "JWT_CLOCK_SKEW_S": "allowed clock skew for `exp`/`iat`/`nbf` (seconds)",
    "JWT_MAX_LIFETIME_S": "longest accepted client JWT lifetime, `exp - iat` (seconds)",
    "JWKS_REFRESH_INTERVAL_S": "an unknown `kid` refreshes an issuer's JWKS at most this often (seconds)",
    "JWKS_TIMEOUT_S": "timeout for fetching a JWKS (seconds)",
    "REDIS_URL": "`jti` replay store shared by every worker and replica (when empty: the DATABASE_URL database)",
    "CARDS_DIR": "card content, references and value sets",
    "FIXTURES_DIR": "fixture patients (demo, review packet, `cds-service fire`)",
    "LOG_LEVEL": "log level of the service's loggers",
    "MODE": "`live` (serve cards) or `shadow` (answer every hook call `{\"cards\": []}`, never 412, and audit "
            "what would have been shown)",
    "DISABLED_CARDS": "comma-separated card ids never served, in any mode (audited as withheld); "
                      "an unknown id stops start-up",
    "DECISION_MEMORY_HOURS": "how long decision memory lasts, in hours (0 = off); see *Going live*",
    "PROFILE": "`production` (AUTH=jwt, PUBLIC_BASE_URL and AUDIT_KEY required) or `development` "
               "(allows AUTH=off; `serve --dev`, tests and benchmarks only)",
    "REVIEW_PAGES": "`on` / `off`: serve the /review pages (default: on in the development profile only)",
    "REPLAY_TIMEOUT_S": "longest wait for the jti replay store (Redis, else the database); no answer = 401",
    "FEEDBACK_WINDOW_HOURS": "feedback accepted only for cards this service issued to the same client "
                             "this recently",
    "AUDIT_4XX_PER_MINUTE": "refused calls (4xx) audited one row each up to this many per minute and worker; "
                            "the rest are counted in one summary row",
    "STORE_TIMEOUT_S": "longest wait of a hook call for the decision memory and the record of the cards it "
                       "issues; past it the cards are shown, not recorded (feedback for them is refused), "
                       "and a warning is logged",
    "CALL_SLOTS": "hook calls computing at once in one process; a call waiting for a FHIR server or the "
                  "database gives its slot up meanwhile. 1 suits CPython (one thread runs Python at a time: "
                  "calls interleaved mid-way cost a quarter more CPU); 0 = no limit",
}


def describe() -> list[tuple[str, str, str, str]]:
    """(env var, config key, default, meaning) for every setting, for the README."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default
        shown = "empty" if default == "" else f"`{default}`"
        if f.name in ("CARDS_DIR", "FIXTURES_DIR"):
            shown = f"the package's `{Path(str(default)).name}/` (the checkout's `./{Path(str(default)).name}`)"
        if f.name in DEV_OVERRIDES:
            shown += f" (dev: `{DEV_OVERRIDES[f.name]}`)"
        rows.append((ENV_PREFIX + f.name, f.name, shown, DESCRIPTIONS.get(f.name, "")))
    return rows


def settings_table() -> str:
    lines = ["| env var | config key | default | meaning |", "|---|---|---|---|"]
    lines += [f"| {env} | {key} | {default} | {meaning} |" for env, key, default, meaning in describe()]
    return "\n".join(lines)
