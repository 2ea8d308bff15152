"""Outside the clinical scope, and data that does not count: no cards at all.
"""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from acceptance.support import (
    DM_SNOMED,
    HOOKS,
    ILD_J8410,
    ILD_SNOMED,
    LOINC,
    NEGATIVE_LOINC,
    PATHS,
    PM_SNOMED,
    POSITIVE_SNOMED,
    PRIVIGEN_NDC11,
    Record,
    call,
    coding,
    concept,
    draft,
    hook_request,
    ids,
    interp,
    same_cards,
    table,
)


def scope_refuted_ild_only() -> Record:
    r = Record("acc-o-refuted", "Rafe", "Widerlegt")
    r.cond("acc-o-refuted-ild", ILD_J8410, verification="refuted")
    r.renal_ok()
    return r


def scope_entered_in_error_antibody_only() -> Record:
    r = Record("acc-o-eie", "Esme", "Irrtum")
    r.obs("acc-o-eie-pl7", concept(coding(LOINC, "33772-5", "PL-7 Ab [Presence] in Serum")),
          status="entered-in-error", valueString="Strongly positive")
    r.renal_ok()
    return r


def scope_negative_mda5_only() -> Record:
    r = Record("acc-o-mda5neg", "Nell", "Negativ")
    r.obs("acc-o-mda5neg-ab", concept(coding(LOINC, "82424-3", "MDA5 Ab [Presence] in Serum by Line blot")),
          valueCodeableConcept=NEGATIVE_LOINC)
    r.renal_ok()
    return r


def scope_resolved_ild_and_other_conditions() -> Record:
    r = Record("acc-o-resolved", "Ruth", "Vergangen")
    r.cond("acc-o-resolved-ild", ILD_SNOMED, clinical="resolved")
    r.cond("acc-o-resolved-dm", DM_SNOMED, clinical="inactive")
    r.cond("acc-o-resolved-eie", PM_SNOMED, verification="entered-in-error")
    r.renal_ok()
    return r


def scope_itp_with_equivocal_and_preliminary_results() -> Record:
    r = Record("acc-o-itp", "Ivo", "Thrombozyt")
    r.cond("acc-o-itp-itp", concept(text="Immune thrombocytopenia"))
    r.obs("acc-o-itp-jo1", concept(coding(LOINC, "33571-1")), valueQuantity={"value": 35, "unit": "AU/mL"},
          interpretation=interp("E"), referenceRange=[{"high": {"value": 29, "unit": "AU/mL"}}])
    r.obs("acc-o-itp-pl12", concept(coding(LOINC, "33771-7")), status="preliminary", valueString="Positive")
    r.renal_ok()
    return r


SCOPE_OUT = {f.__name__: f for f in (scope_refuted_ild_only, scope_entered_in_error_antibody_only,
                                     scope_negative_mda5_only, scope_resolved_ild_and_other_conditions,
                                     scope_itp_with_equivocal_and_preliminary_results)}


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("name", sorted(SCOPE_OUT))
def test_outside_the_clinical_scope_gets_no_cards(client: FlaskClient, templates: dict[str, dict[str, str]],
                                                  name: str, hook: str) -> None:
    record = SCOPE_OUT[name]()
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    assert table() == []
    response = client.post(PATHS[hook], json=hook_request(hook, record, [ivig], templates=templates[hook]))
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_ild_with_a_negative_mda5_is_an_antibody_result_on_record(client: FlaskClient,
                                                                 templates: dict[str, dict[str, str]]) -> None:
    record = scope_negative_mda5_only()
    record.cond("acc-o-mda5neg-ild", ILD_J8410)
    ivig = draft(record.pid, "acc-o-mda5neg-ivig", PRIVIGEN_NDC11)
    expected = table(ild=True, antibody_on_record=True)
    assert expected == []
    for hook in HOOKS:
        assert call(client, hook_request(hook, record, [ivig], templates=templates[hook])) == []


@pytest.mark.parametrize("clinical, verification, counts", [
    # issue 12: provisional, differential and unconfirmed are "possible": never enough on their own
    ("active", "provisional", False),
    ("active", "differential", False),
    ("active", "unconfirmed", False),
    ("relapse", "confirmed", True),
    ("remission", "confirmed", False),
    ("inactive", "confirmed", False),
    (None, None, True),
])
def test_condition_statuses(client: FlaskClient, templates: dict[str, dict[str, str]], clinical: str | None,
                            verification: str | None, counts: bool) -> None:
    record = Record(f"acc-st-{clinical}-{verification}")
    record.obs(f"{record.pid}-jo1", concept(coding(LOINC, "8076-2")), valueCodeableConcept=POSITIVE_SNOMED)
    record.cond(f"{record.pid}-ild", ILD_SNOMED, clinical=clinical, verification=verification)
    record.renal_ok()
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    got = ids(call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"])))
    same_cards(got, table(ild=counts, synthetase_positive=True))
