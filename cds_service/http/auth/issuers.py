"""Trusted issuers: ``TRUSTED_ISSUERS`` (inline JSON or a file path) parsed into ``TrustedIssuer``s.

Each issuer names its keys (``jwks_url``, inline ``jwks``, allowed ``jku`` prefixes) and, optionally,
the tenants it may speak for.  Anything malformed is a ``SettingsError`` that names the issuer and key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cds_service.http.auth.keys import KeySet, key_url_problem
from cds_service.settings import SettingsError
from cds_service.urls import allowed as url_allowed

# An issuer's iss is stored with feedback and audit rows (String(300)).
_MAX_ISS_CHARS = 300

_ISSUER_KEYS = frozenset({"jwks_url", "jwks", "jku_allow", "tenants"})


@dataclass(frozen=True)
class TrustedIssuer:
    iss: str
    jwks: KeySet | None = None
    jwks_url: str | None = None
    jku_allow: tuple[str, ...] = ()
    tenants: frozenset[str] | None = None  # None: the tenant claim is not checked

    def allows_jku(self, jku: str) -> bool:
        return url_allowed(jku, self.jku_allow, wildcard=False)  # one strict check: cds_service/urls.py


def load_trusted_issuers(value: str) -> dict[str, TrustedIssuer]:
    """Parse ``TRUSTED_ISSUERS``: inline JSON (starts with ``{``) or a path to a JSON file.

    ``{"<iss>": {"jwks_url": "...", "jwks": {...}, "jku_allow": ["https://prefix/"],
    "tenants": ["..."]}}``.  Raises ``SettingsError`` naming what is wrong.
    """
    text = value.strip()
    if not text:
        return {}
    if text.startswith("{"):
        source = "TRUSTED_ISSUERS (inline JSON)"
    else:
        path = Path(text).expanduser()
        source = f"TRUSTED_ISSUERS file {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{source} cannot be read: {exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise SettingsError(f"{source} must be an object mapping each issuer (iss) to its keys")
    return {iss: _parse_issuer(source, iss, entry) for iss, entry in document.items()}


def _parse_issuer(source: str, iss: str, entry: Any) -> TrustedIssuer:
    where = f"{source}, issuer {iss!r}"
    if not iss.strip():
        raise SettingsError(f"{source}: an issuer (iss) may not be empty")
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: must be an object with jwks_url, jwks, jku_allow and/or tenants")
    unknown = sorted(set(entry) - _ISSUER_KEYS)
    if unknown:
        raise SettingsError(f"{where}: unknown keys {unknown}; known keys: {sorted(_ISSUER_KEYS)}")

    if len(iss) > _MAX_ISS_CHARS:
        raise SettingsError(f"{source}: issuer {iss[:40]!r}... is longer than {_MAX_ISS_CHARS} characters")
    jwks_url = entry.get("jwks_url")
    if jwks_url is not None:
        problem = key_url_problem(jwks_url, need_path=False)
        if problem:
            raise SettingsError(f"{where}: jwks_url {problem}")

    jwks: KeySet | None = None
    if entry.get("jwks") is not None:
        try:
            jwks, skipped = KeySet.from_document(entry["jwks"])
        except ValueError as exc:
            raise SettingsError(f"{where}: jwks is {exc}") from None
        if skipped or not len(jwks):
            raise SettingsError(f"{where}: jwks has {skipped} unusable keys (each key needs a kid, "
                                "a public asymmetric key, use 'sig' if any); fix or remove them")

    jku_allow = entry.get("jku_allow", [])
    if not isinstance(jku_allow, list) or not all(isinstance(p, str) for p in jku_allow):
        raise SettingsError(f"{where}: jku_allow must be a list of URL prefixes")
    for prefix in jku_allow:
        problem = key_url_problem(prefix, need_path=True)
        if problem:
            raise SettingsError(f"{where}: jku_allow entry {prefix!r} {problem}")

    tenants = entry.get("tenants")
    if tenants is not None and not (isinstance(tenants, list) and tenants
                                    and all(isinstance(t, str) and t for t in tenants)):
        raise SettingsError(f"{where}: tenants must be a non-empty list of strings (omit it to "
                            "accept any tenant)")

    if jwks is None and jwks_url is None and not jku_allow:
        raise SettingsError(f"{where}: give its keys: jwks_url, jwks or jku_allow")
    return TrustedIssuer(iss=iss, jwks=jwks, jwks_url=jwks_url, jku_allow=tuple(jku_allow),
                         tenants=frozenset(tenants) if tenants is not None else None)
