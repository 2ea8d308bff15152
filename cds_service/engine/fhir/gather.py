"""Gather the data a service needs: prefetch first, the rest from ``fhirServer``, in parallel,
under one deadline (CDS Hooks 2.0 §Prefetch; issue 4).

Per prefetch key of the service:

==========================================  ==========================================================
what the request holds                      what happens (``KeyOutcome.status``)
==========================================  ==========================================================
data (a resource or a Bundle)               used as is: ``prefetch``; a Bundle with a ``next`` link is
                                            paged through on ``fhirServer`` (bounded)
``null``                                    no data, no query: ``null``
an OperationOutcome, or a Bundle of only    query ``fhirServer``: ``fetched`` / ``failed``
OperationOutcomes, or anything unreadable
absent                                      render the template and query: ``fetched`` / ``failed``
a query is needed but there is no           ``skipped`` (a disallowed server is never contacted)
``fhirServer``, it is not allowed, or the
template has an unresolvable token
==========================================  ==========================================================

Under ``FHIR_SERVERS=*`` a server whose name resolves to an internal address (loopback, private,
link-local, metadata, ...) is refused when the connection is made, before any byte is sent: its
keys are ``failed`` with reason ``server not allowed`` (an internal IP literal or a local name is
refused up front and its keys are ``skipped``).

An instance read (``Patient/{{context.patientId}}``) answered 404/410 is ``null``: the server says
there is no such resource.

Truncation is never silent.  When paging stops early (page or entry limit, deadline, a failed
page, a ``next`` link off the server, or no usable ``fhirServer`` to page on), the key keeps the data
it has, its status stays ``prefetch``/``fetched``, ``complete`` is False and ``reason`` says
``incomplete: <why>``; ``Gathered.incomplete_keys`` lists such keys so the caller can add a data
note.  Keys whose data could not be had at all (``failed``, ``skipped``) are ``failed_keys``.

All queries share one deadline, ``FHIR_DEADLINE_S`` from the start of ``gather``.  A key whose first
response has not arrived by then is ``failed`` with reason ``deadline``; a key with some pages keeps
them (``incomplete: deadline``).  Unfinished work is abandoned, never waited for: queued jobs are
cancelled, and a running fetch's connection is shut down at the deadline, so its thread is free at
once (``client``/``transport``), however slowly the server sends.

When a required key is unavailable and it cannot be helped (no ``fhirServer``, a server not allowed,
or every required key unavailable), ``PreconditionFailed`` (412) names the missing keys.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from cds_service import protocol
from cds_service.engine.fhir.client import FhirClient, FhirError
from cds_service.engine.gate import released
from cds_service.engine.services import ServiceDefinition
from cds_service.errors import PreconditionFailed
from cds_service.protocol import HookRequest
from cds_service.settings import Settings
from cds_service.urls import allowed, origin

logger = logging.getLogger("cds_service.engine.fhir")

PREFETCH = "prefetch"
FETCHED = "fetched"
NULL = "null"
FAILED = "failed"
SKIPPED = "skipped"
STATUSES = (PREFETCH, FETCHED, NULL, FAILED, SKIPPED)
UNAVAILABLE = frozenset({FAILED, SKIPPED})

_READ_URL = re.compile(r"^[A-Z][A-Za-z]+/[^/?]+$")
_MAX_BUNDLE_NESTING = 3

Resource = dict[str, Any]


@dataclass
class KeyOutcome:
    """What became of one prefetch key.  No ids, no URLs: safe to log and audit."""

    key: str
    status: str  # prefetch | fetched | null | failed | skipped
    elapsed_ms: float  # from the start of gather to when this key's data was settled
    reason: str = ""
    pages: int = 0  # pages read from the FHIR server for this key (prefetch itself not counted)
    entries: int = 0  # resources this key holds (OperationOutcomes not counted)
    complete: bool = True  # False: some data, but paging stopped early (see ``reason``)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "ms": round(self.elapsed_ms, 1)}
        if self.reason:
            out["reason"] = self.reason
        if self.pages:
            out["pages"] = self.pages
        out["entries"] = self.entries
        if not self.complete:
            out["complete"] = False
        return out


@dataclass
class Gathered:
    resources: list[Resource]  # all keys, bundles flattened, OperationOutcomes dropped, unique (type, id)
    by_key: dict[str, list[Resource]]
    outcomes: dict[str, KeyOutcome]
    elapsed_ms: float

    @property
    def failed_keys(self) -> list[str]:
        """Keys whose data could not be had (``failed`` or ``skipped``)."""
        return [k for k, o in self.outcomes.items() if o.status in UNAVAILABLE]

    @property
    def incomplete_keys(self) -> list[str]:
        """Keys that have data, but not all of it (paging stopped early)."""
        return [k for k, o in self.outcomes.items() if o.status not in UNAVAILABLE and not o.complete]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per key status, timing and reason, for the audit record (no PHI)."""
        return {k: o.summary() for k, o in self.outcomes.items()}


# --------------------------------------------------------------------------------------------------
# Prefetch values
# --------------------------------------------------------------------------------------------------

def _is_outcome(value: Any) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"


def _iter_resources(value: Any, depth: int = 0) -> Iterator[Resource]:
    """The resources in a prefetch value or response: Bundles flattened (nested ones too, a few
    levels deep), OperationOutcomes and anything that is not a resource dropped."""
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return
    if value["resourceType"] == "Bundle" and depth < _MAX_BUNDLE_NESTING:
        entries = value.get("entry")
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                yield from _iter_resources(entry.get("resource"), depth + 1)
        return
    if _is_outcome(value):
        return
    yield value


def _is_data(value: Any) -> bool:
    """A prefetch value that is data (possibly an empty Bundle), not an error report."""
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return False
    if _is_outcome(value):
        return False
    if value["resourceType"] == "Bundle":
        entries = value.get("entry")
        if entries is not None and not isinstance(entries, list):
            return False
        resources = [e.get("resource") for e in entries or [] if isinstance(e, dict)]
        # A Bundle holding only OperationOutcomes is how clients report a failed prefetch query.
        if resources and all(_is_outcome(r) for r in resources):
            return False
    return True


def _next_link(bundle: Any) -> str | None:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return None
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            if isinstance(url, str) and url.strip():
                return url.strip()
    return None


def _is_error_outcome(document: Resource) -> bool:
    """A 200 answer that is only an error report: an OperationOutcome, or a Bundle with no resources
    but an OperationOutcome with an error/fatal issue.  A searchset with an informational outcome
    and no matches is just empty."""
    if _is_outcome(document):
        return True
    if document.get("resourceType") != "Bundle" or any(True for _ in _iter_resources(document)):
        return False
    entries = document.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not _is_outcome(resource):
            continue
        issues = resource.get("issue") if isinstance(resource, dict) else None
        for issue in issues if isinstance(issues, list) else []:
            if isinstance(issue, dict) and issue.get("severity") in ("error", "fatal"):
                return True
    return False


# --------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------

def render_template(template: str, request: HookRequest) -> str | None:
    """The template with its tokens replaced by URL-encoded context values; None when a token
    cannot be resolved (a missing or non-primitive context field, an unknown token)."""
    context = dict(request.context or {})
    context.update({k: v for k, v in (("patientId", request.patient_id), ("userId", request.user_id),
                                      ("encounterId", request.encounter_id)) if v})
    return protocol.render_template(template, context)


def _join(base: str, relative: str) -> str:
    return base.rstrip("/") + "/" + relative.lstrip("/")


def _usable_server(fhir_server: str | None, settings: Settings) -> tuple[str | None, str]:
    """(base URL, "") when the request's server may be queried, else (None, reason)."""
    if not fhir_server:
        return None, "no fhirServer"
    parts = urlsplit(fhir_server) if isinstance(fhir_server, str) else None
    if parts is None or parts.query or not allowed(fhir_server, settings.fhir_servers):
        return None, "server not allowed"
    return fhir_server.rstrip("/"), ""


# --------------------------------------------------------------------------------------------------
# Jobs (one per key that needs the server)
# --------------------------------------------------------------------------------------------------

@dataclass
class _Job:
    key: str
    status: str  # PREFETCH (paging a prefetched Bundle) or FETCHED (querying)
    first_url: str
    is_read: bool = False
    resources: list[Resource] = field(default_factory=list)
    pages: int = 0
    stop_reason: str = ""  # why paging stopped early ("" = complete)
    error: FhirError | None = None  # the first request failed
    not_found: bool = False
    finished_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    abandoned: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class _Plan:
    base: str
    origin: tuple[str, str, int]
    token: str | None
    allow_list: list[str]
    deadline: float
    max_pages: int
    max_entries: int
    max_bytes: int


def _run(job: _Job, plan: _Plan, client: FhirClient) -> None:
    """Fetch a key's pages until done, a limit, an error, the deadline or abandonment."""
    url: str | None = job.first_url
    try:
        while url is not None:
            if job.abandoned.is_set():
                return
            if job.pages >= plan.max_pages:
                job.stop_reason = "page limit"
                break
            if len(job.resources) >= plan.max_entries:
                job.stop_reason = "entry limit"
                break
            remaining = plan.deadline - time.monotonic()
            if remaining <= 0:
                raise FhirError("deadline")
            try:
                document = client.get(url, plan.token, remaining, allow_list=plan.allow_list,
                                      max_bytes=plan.max_bytes)
            except FhirError as exc:
                if job.is_read and job.pages == 0 and exc.status in (404, 410):
                    job.not_found = True
                    return
                raise
            if _is_error_outcome(document):
                raise FhirError("OperationOutcome")
            page = list(_iter_resources(document))
            room = plan.max_entries - len(job.resources)
            with job.lock:
                job.resources.extend(page[:room])
                job.pages += 1
            if len(page) > room:
                job.stop_reason = "entry limit"
                break
            url = _resolve_next(_next_link(document), plan)
    except FhirError as exc:
        if exc.reason == "timeout":
            # Every call's timeout is the time left before the shared deadline: it is the deadline,
            # whether the worker or the waiting caller notices first.
            exc = FhirError("deadline")
        if job.status == FETCHED and job.pages == 0:
            job.error = exc
        else:
            job.stop_reason = exc.reason
    finally:
        with job.lock:
            job.finished_at = time.monotonic()


def _resolve_next(link: str | None, plan: _Plan) -> str | None:
    """The next page's absolute URL; FhirError when it points off the fhirServer."""
    if link is None:
        return None
    url = urljoin(plan.base + "/", link)
    if origin(url) != plan.origin or not allowed(url, plan.allow_list):
        raise FhirError("next link off server")
    return url


# --------------------------------------------------------------------------------------------------
# gather
# --------------------------------------------------------------------------------------------------

def _ms(since: float, now: float | None = None) -> float:
    return ((time.monotonic() if now is None else now) - since) * 1000.0


def gather(request: HookRequest, service: ServiceDefinition, settings: Settings,
           client: FhirClient) -> Gathered:
    """Collect the resources for every prefetch key of ``service`` (see the module docstring)."""
    started = time.monotonic()
    deadline = started + settings.FHIR_DEADLINE_S
    prefetch: Mapping[str, Any] = request.prefetch if isinstance(request.prefetch, dict) else {}
    base, server_problem = _usable_server(request.fhir_server, settings)

    outcomes: dict[str, KeyOutcome] = {}
    by_key: dict[str, list[Resource]] = {}
    jobs: dict[str, _Job] = {}

    for key, template in service.prefetch.items():
        value = prefetch.get(key)
        if key in prefetch and value is None:
            outcomes[key] = KeyOutcome(key, NULL, _ms(started))
            by_key[key] = []
            continue
        if key in prefetch and _is_data(value):
            by_key[key] = list(_iter_resources(value))
            next_link = _next_link(value)
            if next_link is None:
                outcomes[key] = KeyOutcome(key, PREFETCH, _ms(started), entries=len(by_key[key]))
            elif base is None:
                outcomes[key] = KeyOutcome(key, PREFETCH, _ms(started), f"incomplete: {server_problem}",
                                           entries=len(by_key[key]), complete=False)
            else:
                jobs[key] = _Job(key, PREFETCH, next_link)
            continue
        # Absent, an OperationOutcome, or unreadable: the server has to answer for this key.
        if base is None:
            outcomes[key] = KeyOutcome(key, SKIPPED, _ms(started), server_problem)
            continue
        relative = render_template(template, request)
        if relative is None:
            outcomes[key] = KeyOutcome(key, SKIPPED, _ms(started), "unresolvable template")
            continue
        jobs[key] = _Job(key, FETCHED, _join(base, relative), is_read=bool(_READ_URL.match(relative)))

    if jobs and base is not None:
        server_origin = origin(base)
        assert server_origin is not None  # base passed allowed()
        plan = _Plan(base=base, origin=server_origin, token=request.access_token,
                     allow_list=settings.fhir_servers, deadline=deadline,
                     max_pages=settings.FHIR_MAX_PAGES, max_entries=settings.FHIR_MAX_ENTRIES,
                     max_bytes=settings.FHIR_MAX_RESPONSE_BYTES)
        for job in jobs.values():
            if job.status == PREFETCH:
                # The prefetched page is already held; resolve its next link before queueing.
                try:
                    job.first_url = _resolve_next(job.first_url, plan) or ""
                except FhirError as exc:
                    job.stop_reason = exc.reason
                    job.finished_at = time.monotonic()
        # Each job runs in a copy of the caller's context, so per-request logging state (the
        # redaction list of logs.py) also applies to what requests/urllib3 log in the workers.
        # At most ``client.per_origin`` of them run at once for this server; the rest wait in the
        # server's own queue, so a slow server never queues in front of a healthy one.
        futures: dict[Future[None], _Job] = {
            client.submit(server_origin, contextvars.copy_context().run, _run, job, plan, client): job
            for job in jobs.values() if job.finished_at is None
        }
        if futures:
            with released():  # other calls compute while this one waits for the FHIR server
                wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        for future, job in futures.items():
            if not future.done():
                job.abandoned.set()
                future.cancel()  # still queued behind other work: never run it

    for key, job in jobs.items():
        with job.lock:
            finished_at = job.finished_at
            resources = list(job.resources)
            pages = job.pages
        done = finished_at is not None
        elapsed = _ms(started, finished_at) if done else _ms(started)
        if job.status == PREFETCH:
            held = by_key[key] + resources
            by_key[key] = held
            reason = job.stop_reason if done else "deadline"
            outcomes[key] = KeyOutcome(key, PREFETCH, elapsed, f"incomplete: {reason}" if reason else "",
                                       pages=pages, entries=len(held), complete=not reason)
        elif done and job.not_found:
            by_key[key] = []
            outcomes[key] = KeyOutcome(key, NULL, elapsed, "not found", pages=pages)
        elif done and job.error is not None:
            outcomes[key] = KeyOutcome(key, FAILED, elapsed, job.error.reason)
        elif pages == 0:
            outcomes[key] = KeyOutcome(key, FAILED, elapsed, "deadline")
        else:
            by_key[key] = resources
            reason = job.stop_reason if done else "deadline"
            outcomes[key] = KeyOutcome(key, FETCHED, elapsed, f"incomplete: {reason}" if reason else "",
                                       pages=pages, entries=len(resources), complete=not reason)

    # Keep the service's key order (deterministic output and logs).
    outcomes = {k: outcomes[k] for k in service.prefetch}
    by_key = {k: by_key[k] for k in service.prefetch if k in by_key}
    gathered = Gathered(resources=_unique(by_key), by_key=by_key, outcomes=outcomes,
                        elapsed_ms=_ms(started))
    _log(gathered)
    _check_required(gathered, service, base, server_problem)
    return gathered


def _unique(by_key: Mapping[str, list[Resource]]) -> list[Resource]:
    seen: set[tuple[str, str]] = set()
    out: list[Resource] = []
    for resources in by_key.values():
        for resource in resources:
            rid = resource.get("id")
            if isinstance(rid, str) and rid:
                identity = (str(resource.get("resourceType")), rid)
                if identity in seen:
                    continue
                seen.add(identity)
            out.append(resource)
    return out


def _log(gathered: Gathered) -> None:
    # INFO when the server was involved or something is missing; a call served wholly from
    # prefetch is routine (DEBUG), and formatting its line costs every call.
    routine = all(o.status in (PREFETCH, NULL) and o.complete and not o.reason for o in gathered.outcomes.values())
    level = logging.DEBUG if routine else logging.INFO
    if not logger.isEnabledFor(level):
        return
    parts = []
    for key, outcome in gathered.outcomes.items():
        detail = [f"{outcome.elapsed_ms:.0f}ms"]
        if outcome.pages:
            detail.append(f"{outcome.pages}p")
        if outcome.status in (PREFETCH, FETCHED):
            detail.append(f"{outcome.entries}e")
        if outcome.reason:
            detail.append(outcome.reason)
        parts.append(f"{key}={outcome.status}({','.join(detail)})")
    logger.log(level, "fhir gather %.0fms: %s", gathered.elapsed_ms, " ".join(parts))


def _check_required(gathered: Gathered, service: ServiceDefinition, base: str | None,
                    server_problem: str) -> None:
    required = [k for k in service.prefetch if k in service.required_keys]
    missing = [k for k in required if gathered.outcomes[k].status in UNAVAILABLE]
    if not missing:
        return
    if base is None:
        why = server_problem
    elif len(missing) == len(required):
        why = "every required query failed"
    else:
        return  # some required data came: decide with it, the caller notes what is missing
    raise PreconditionFailed(f"required data could not be obtained ({why}): {', '.join(missing)}",
                             missing)
