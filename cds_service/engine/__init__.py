"""The engine: one hook call end to end (pipeline), services, content, store, FHIR gathering. No Flask."""
