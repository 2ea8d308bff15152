"""Integrators' and developers' tools: fixture FHIR search and request builder, `fire`, `keys`."""
