"""Integrators' and developers' tools, never on the request path of the service:

- ``fhir_search``: an in-memory FHIR REST search over a list of resources;
- ``fixtures``: the synthetic patients and the CDS Hooks requests built from them;
- ``fire``: ``cds-service fire``, a CDS client that calls any CDS service with a fixture patient;
- ``keys``: CDS client signing keys and JWTs, and ``cds-service keys new``.

The command-line options live in ``cds_service/cli.py``.
"""

# Exit codes of the devtools commands (``fire``, ``keys new``).
EXIT_OK, EXIT_PROTOCOL, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
