"""Acceptance tests of the service, written from the issue texts and the CDS Hooks 2.0 spec, not from
the code: ``support`` (builders, the rules table, response checks), ``patients`` (synthetic patients),
``ehr`` (a loopback FHIR server), one ``test_*`` file per subject."""
