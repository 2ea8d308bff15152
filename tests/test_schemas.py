"""The CDS Hooks JSON Schemas against the spec's own examples and against known bad and quirky input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from cds_service.protocol.schema import SCHEMA_NAMES, first_error, load_schema, validator

EXAMPLES = Path(__file__).parent / "spec_examples"

# file -> schema of the whole document (None: not a protocol document)
EXAMPLE_SCHEMAS: dict[str, str | None] = {
    "discovery-response.json": "discovery",
    "prefetch-templates-discovery.json": "discovery",
    "service-request-patient-view.json": "request",
    "prefetch-data-request.json": "request",
    "order-select-request.json": "request",
    "order-select-request-r4.json": "request",
    "order-sign-request-r4.json": "request",
    "cards-response.json": "response",
    "cards-response-autolaunchable.json": "response",
    "cards-response-empty.json": "response",
    "system-actions-response.json": "response",
    "order-select-response-systemactions.json": "response",
    "feedback-accepted.json": "feedback",
    "feedback-overridden.json": "feedback",
    "feedback-overridden-with-reason.json": "feedback",
    "jwt-header.json": None,
    "jwt-payload.json": None,
    "jwks-public.json": None,
}

HOOK_CONTEXTS = {"order-select": "context-order-select", "order-sign": "context-order-sign"}


def example(name: str) -> Any:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def assert_valid(schema: str, instance: Any) -> None:
    assert first_error(schema, instance) is None


def assert_invalid(schema: str, instance: Any, *fragments: str) -> str:
    message = first_error(schema, instance)
    assert message is not None, f"{schema} accepted {instance!r}"
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- schema files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_files_are_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://ivig-cds.example.org/schemas/{name}.json"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_files_are_self_contained(name: str) -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(load_schema(name))
    assert all(ref.startswith("#/$defs/") for ref in refs), refs


def test_loader_accepts_suffix_copies_and_caches() -> None:
    first = load_schema("request.json")
    first["title"] = "changed by a caller"
    assert load_schema("request")["title"] != "changed by a caller"
    assert validator("request") is validator("request.json")
    with pytest.raises(ValueError):
        load_schema("../pyproject")


def test_format_checking_is_on() -> None:
    """uri and date-time are only checked when their optional libraries are installed."""
    request = example("service-request-patient-view.json")
    request["fhirServer"] = "http://exa mple.org"
    assert_invalid("request", request, "$.fhirServer")
    feedback = example("feedback-overridden.json")
    feedback["feedback"][0]["outcomeTimestamp"] = "yesterday"
    assert_invalid("feedback", feedback, "$.feedback[0].outcomeTimestamp", "date-time")


# --- the spec's examples ---------------------------------------------------------------------------


def test_every_example_is_mapped() -> None:
    on_disk = {path.name for path in EXAMPLES.glob("*.json")}
    assert on_disk == set(EXAMPLE_SCHEMAS)


@pytest.mark.parametrize(
    "name", sorted(name for name, schema in EXAMPLE_SCHEMAS.items() if schema is not None)
)
def test_spec_example_validates(name: str) -> None:
    schema = EXAMPLE_SCHEMAS[name]
    assert schema is not None
    assert_valid(schema, example(name))


@pytest.mark.parametrize(
    "name", sorted(name for name, schema in EXAMPLE_SCHEMAS.items() if schema == "request")
)
def test_spec_example_context_validates_for_order_hooks(name: str) -> None:
    request = example(name)
    context_schema = HOOK_CONTEXTS.get(request["hook"])
    if context_schema is None:
        pytest.skip(f"{request['hook']} is not a hook this service implements")
    assert_valid(context_schema, request["context"])


def test_order_select_example_is_not_an_order_sign_context_problem() -> None:
    """An order-select context also satisfies order-sign (extra selections is just another field)."""
    assert_valid("context-order-sign", example("order-select-request-r4.json")["context"])


def test_order_sign_context_needs_no_selections_but_order_select_does() -> None:
    context = example("order-sign-request-r4.json")["context"]
    assert "selections" not in context
    assert_valid("context-order-sign", context)
    assert_invalid("context-order-select", context, "$:", "'selections'")


# --- request envelope ------------------------------------------------------------------------------


@pytest.fixture
def request_doc() -> dict[str, Any]:
    doc: dict[str, Any] = example("order-select-request.json")
    return doc


@pytest.fixture
def authorized_request(request_doc: dict[str, Any]) -> dict[str, Any]:
    request_doc["fhirAuthorization"] = {
        "access_token": "some-opaque-fhir-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read user/Observation.read",
        "subject": "cds-service4",
    }
    return request_doc


def test_request_missing_hook(request_doc: dict[str, Any]) -> None:
    del request_doc["hook"]
    assert_invalid("request", request_doc, "$:", "missing required property 'hook'")


def test_request_missing_context(request_doc: dict[str, Any]) -> None:
    del request_doc["context"]
    assert_invalid("request", request_doc, "'context'")


@pytest.mark.parametrize("bad", [12345, None, ["d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"], {}])
def test_request_hook_instance_wrong_type(request_doc: dict[str, Any], bad: Any) -> None:
    request_doc["hookInstance"] = bad
    assert_invalid("request", request_doc, "$.hookInstance", "expected string")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not-a-uuid",
        "d1577c69dfbe44adba6d3e05e953b2ea",
        "urn:uuid:d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "{d1577c69-dfbe-44ad-ba6d-3e05e953b2ea}",
        "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea\n",
        "g1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    ],
)
def test_request_hook_instance_not_a_uuid(request_doc: dict[str, Any], bad: str) -> None:
    request_doc["hookInstance"] = bad
    assert_invalid("request", request_doc, "$.hookInstance")


def test_request_hook_instance_case_insensitive(request_doc: dict[str, Any]) -> None:
    request_doc["hookInstance"] = "D1577C69-DFBE-44AD-BA6D-3E05E953B2EA"
    assert_valid("request", request_doc)


def test_request_with_fhir_authorization(authorized_request: dict[str, Any]) -> None:
    assert_valid("request", authorized_request)
    authorized_request["fhirAuthorization"]["patient"] = "MRI-59879846"
    assert_valid("request", authorized_request)


def test_request_fhir_authorization_without_fhir_server(authorized_request: dict[str, Any]) -> None:
    del authorized_request["fhirServer"]
    assert_invalid("request", authorized_request, "$:", "'fhirServer' is required when 'fhirAuthorization'")


def test_schema_expresses_fhir_server_dependency_with_dependent_required() -> None:
    assert load_schema("request")["dependentRequired"] == {"fhirAuthorization": ["fhirServer"]}


def test_request_fhir_server_without_authorization_is_fine(request_doc: dict[str, Any]) -> None:
    assert "fhirAuthorization" not in request_doc
    assert_valid("request", request_doc)


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_request_token_type_case_insensitive(authorized_request: dict[str, Any], token_type: str) -> None:
    authorized_request["fhirAuthorization"]["token_type"] = token_type
    assert_valid("request", authorized_request)


@pytest.mark.parametrize("token_type", ["Basic", "Bearer ", "Bearerx", "", "MAC"])
def test_request_token_type_other_than_bearer(authorized_request: dict[str, Any], token_type: str) -> None:
    authorized_request["fhirAuthorization"]["token_type"] = token_type
    assert_invalid("request", authorized_request, "$.fhirAuthorization.token_type")


@pytest.mark.parametrize("field", ["access_token", "token_type", "expires_in", "scope", "subject"])
def test_request_fhir_authorization_required_fields(authorized_request: dict[str, Any], field: str) -> None:
    del authorized_request["fhirAuthorization"][field]
    assert_invalid("request", authorized_request, "$.fhirAuthorization", f"'{field}'")


@pytest.mark.parametrize("expires_in", ["300", 300.5, None])
def test_request_expires_in_must_be_integer(authorized_request: dict[str, Any], expires_in: Any) -> None:
    authorized_request["fhirAuthorization"]["expires_in"] = expires_in
    assert_invalid("request", authorized_request, "$.fhirAuthorization.expires_in")


def test_request_error_never_echoes_values(request_doc: dict[str, Any]) -> None:
    request_doc["fhirAuthorization"] = "secret-token-value-4711"
    message = assert_invalid("request", request_doc, "$.fhirAuthorization", "expected object, got string")
    assert "secret-token-value-4711" not in message
    request_doc["fhirAuthorization"] = {"access_token": 987654321, "token_type": "Bearer"}
    message = first_error("request", request_doc) or ""
    assert "987654321" not in message


@pytest.mark.parametrize("fhir_server", ["ftp://example.org/fhir", "file:///etc/passwd", "fhir.example.org"])
def test_request_fhir_server_must_be_http_url(request_doc: dict[str, Any], fhir_server: str) -> None:
    request_doc["fhirServer"] = fhir_server
    assert_invalid("request", request_doc, "$.fhirServer")


def test_request_prefetch_values_object_or_null(request_doc: dict[str, Any]) -> None:
    request_doc["prefetch"] = {
        "patient": {"resourceType": "Patient", "id": "MRI-59879846"},
        "conditions": None,
        "medications": {"resourceType": "OperationOutcome", "issue": []},
    }
    assert_valid("request", request_doc)
    request_doc["prefetch"]["medications"] = "MedicationRequest?patient=1"
    assert_invalid("request", request_doc, "$.prefetch.medications", "expected object or null")
    request_doc["prefetch"] = None
    assert_invalid("request", request_doc, "$.prefetch", "expected object")


def test_request_prefetch_key_with_dash_is_quoted_in_path(request_doc: dict[str, Any]) -> None:
    request_doc["prefetch"] = {"hemoglobin-a1c": 1}
    assert_invalid("request", request_doc, '$.prefetch["hemoglobin-a1c"]')


def test_request_unknown_fields_and_extension_accepted(request_doc: dict[str, Any]) -> None:
    request_doc["extension"] = {"com.example.timestamp": "2017-11-27T22:13:25Z"}
    request_doc["org.example.unknown"] = [1, 2, 3]
    assert_valid("request", request_doc)


@pytest.mark.parametrize("extension", ["x", ["a"], 1, None])
def test_request_extension_must_be_object(request_doc: dict[str, Any], extension: Any) -> None:
    request_doc["extension"] = extension
    assert_invalid("request", request_doc, "$.extension", "expected object")


def test_request_context_must_be_object(request_doc: dict[str, Any]) -> None:
    request_doc["context"] = []
    assert_invalid("request", request_doc, "$.context")


# --- hook contexts ---------------------------------------------------------------------------------


@pytest.fixture
def select_context() -> dict[str, Any]:
    context: dict[str, Any] = example("order-select-request-r4.json")["context"]
    return context


def medication_request(select_context: dict[str, Any]) -> dict[str, Any]:
    for entry in select_context["draftOrders"]["entry"]:
        if entry["resource"]["resourceType"] == "MedicationRequest":
            resource: dict[str, Any] = entry["resource"]
            return resource
    raise AssertionError("no MedicationRequest in the example")


@pytest.mark.parametrize("schema", sorted(HOOK_CONTEXTS.values()))
def test_draft_orders_without_bundle_type_accepted(select_context: dict[str, Any], schema: str) -> None:
    assert "type" not in select_context["draftOrders"]
    assert_valid(schema, select_context)
    select_context["draftOrders"]["type"] = "collection"
    assert_valid(schema, select_context)


@pytest.mark.parametrize("schema", sorted(HOOK_CONTEXTS.values()))
def test_medication_request_category_as_object_accepted(select_context: dict[str, Any], schema: str) -> None:
    resource = medication_request(select_context)
    category = {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                "code": "inpatient",
            }
        ]
    }
    resource["category"] = category
    resource["reasonCode"] = {"text": "single object instead of an array"}
    assert_valid(schema, select_context)


@pytest.mark.parametrize("schema", sorted(HOOK_CONTEXTS.values()))
def test_draft_medication_request_without_intent_or_medication_accepted(
    select_context: dict[str, Any], schema: str
) -> None:
    resource = medication_request(select_context)
    del resource["intent"]
    del resource["medicationCodeableConcept"]
    assert_valid(schema, select_context)


def test_sandbox_like_empty_draft_accepted() -> None:
    """order-select fired when the order screen opens: a draft with no medication and no intent."""
    context = {
        "userId": "Practitioner/COREPRACTITIONER1",
        "patientId": "smart-1288992",
        "selections": ["MedicationRequest/request-123"],
        "draftOrders": {
            "resourceType": "Bundle",
            "entry": [
                {
                    "resource": {
                        "resourceType": "MedicationRequest",
                        "id": "request-123",
                        "status": "draft",
                        "subject": {"reference": "Patient/smart-1288992"},
                    }
                }
            ],
        },
    }
    assert_valid("context-order-select", context)
    request = {
        "hook": "order-select",
        "hookInstance": "9a0c1f2e-3b4d-4e5f-8a6b-7c8d9e0f1a2b",
        "fhirServer": "http://localhost:8080/fhir",
        "context": context,
    }
    assert_valid("request", request)


@pytest.mark.parametrize("field", ["userId", "patientId", "draftOrders"])
@pytest.mark.parametrize("schema", sorted(HOOK_CONTEXTS.values()))
def test_context_required_fields(select_context: dict[str, Any], schema: str, field: str) -> None:
    del select_context[field]
    assert_invalid(schema, select_context, f"'{field}'")


def test_context_encounter_is_optional(select_context: dict[str, Any]) -> None:
    del select_context["encounterId"]
    assert_valid("context-order-select", select_context)


def test_context_patient_id_non_empty(select_context: dict[str, Any]) -> None:
    select_context["patientId"] = ""
    assert_invalid("context-order-select", select_context, "$.patientId")


@pytest.mark.parametrize("selection", ["103", "MedicationRequest/", "/103", "MedicationRequest/1 03", 103])
def test_context_selections_are_type_slash_id(select_context: dict[str, Any], selection: Any) -> None:
    select_context["selections"] = [selection]
    assert_invalid("context-order-select", select_context, "$.selections[0]")


def test_context_draft_orders_must_be_a_bundle(select_context: dict[str, Any]) -> None:
    select_context["draftOrders"]["resourceType"] = "List"
    assert_invalid("context-order-select", select_context, "$.draftOrders.resourceType", '"Bundle"')


def test_context_error_path_with_root(select_context: dict[str, Any]) -> None:
    del select_context["draftOrders"]["entry"][0]["resource"]
    message = assert_invalid("context-order-select", select_context)
    assert message == "$.draftOrders.entry[0]: missing required property 'resource'"
    message = first_error("context-order-select", select_context, root="$.context") or ""
    assert message.startswith("$.context.draftOrders.entry[0]: ")


def test_context_resource_needs_resource_type(select_context: dict[str, Any]) -> None:
    del select_context["draftOrders"]["entry"][1]["resource"]["resourceType"]
    assert_invalid(
        "context-order-select", select_context, "$.draftOrders.entry[1].resource", "'resourceType'"
    )


# --- response --------------------------------------------------------------------------------------


def card(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "uuid": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
        "summary": "Example Card",
        "indicator": "warning",
        "source": {
            "label": "ivig-cds",
            "topic": {"system": "https://ivig-cds.example.org/card", "code": "example-card"},
        },
    }
    base.update(fields)
    return base


def suggestion(uuid: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "label": "Remove the draft order",
        "uuid": uuid,
        "actions": [
            {
                "type": "delete",
                "description": "Remove the draft order",
                "resourceId": "MedicationRequest/fx-ivig-1",
            }
        ],
    }
    base.update(fields)
    return base


def test_response_full_card_valid() -> None:
    response = {
        "cards": [
            card(
                detail="**Why you are seeing this**",
                suggestions=[suggestion("e56e1945-20b3-4393-8503-a1a20fd73152", isRecommended=True)],
                selectionBehavior="at-most-one",
                overrideReasons=[
                    {"system": "https://ivig-cds.example.org/override", "code": "x", "display": "Other"}
                ],
                links=[{"label": "Evidence", "url": "https://example.org/evidence", "type": "absolute"}],
            )
        ]
    }
    assert_valid("response", response)


def test_response_summary_length() -> None:
    assert_valid("response", {"cards": [card(summary="x" * 140)]})
    assert_invalid("response", {"cards": [card(summary="x" * 141)]}, "$.cards[0].summary", "at most 140")


def test_response_summary_required_and_non_empty() -> None:
    bare = card()
    del bare["summary"]
    assert_invalid("response", {"cards": [bare]}, "$.cards[0]", "'summary'")
    assert_invalid("response", {"cards": [card(summary="")]}, "$.cards[0].summary")


def test_response_suggestions_without_selection_behavior() -> None:
    bad = card(suggestions=[suggestion("e56e1945-20b3-4393-8503-a1a20fd73152")])
    assert_invalid("response", {"cards": [bad]}, "$.cards[0]", "'selectionBehavior'")
    bad["selectionBehavior"] = "any"
    assert_valid("response", {"cards": [bad]})
    bad["selectionBehavior"] = "exactly-one"
    assert_invalid("response", {"cards": [bad]}, "$.cards[0].selectionBehavior")


def test_response_several_recommended_suggestions_need_any() -> None:
    suggestions = [
        suggestion("e56e1945-20b3-4393-8503-a1a20fd73152", isRecommended=True),
        suggestion("f56e1945-20b3-4393-8503-a1a20fd73152", isRecommended=True),
    ]
    assert_invalid(
        "response",
        {"cards": [card(suggestions=suggestions, selectionBehavior="at-most-one")]},
        "$.cards[0].selectionBehavior",
        '"any"',
    )
    assert_valid("response", {"cards": [card(suggestions=suggestions, selectionBehavior="any")]})


def test_response_override_reason_without_display() -> None:
    reasons = [{"system": "https://ivig-cds.example.org/override", "code": "x"}]
    assert_invalid(
        "response", {"cards": [card(overrideReasons=reasons)]}, "$.cards[0].overrideReasons[0]", "'display'"
    )


def test_response_topic_display_optional() -> None:
    assert "display" not in card()["source"]["topic"]
    assert_valid("response", {"cards": [card()]})


@pytest.mark.parametrize("indicator", ["hard-stop", "INFO", None])
def test_response_indicator_values(indicator: Any) -> None:
    assert_invalid("response", {"cards": [card(indicator=indicator)]}, "$.cards[0].indicator")


def test_response_indicator_required() -> None:
    bare = card()
    del bare["indicator"]
    assert_invalid("response", {"cards": [bare]}, "'indicator'")


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda r: r.update(cards=None), "$.cards"),
        (lambda r: r.update(systemActions=None), "$.systemActions"),
        (lambda r: r["cards"][0].update(detail=None), "$.cards[0].detail"),
        (lambda r: r["cards"][0].update(uuid=None), "$.cards[0].uuid"),
        (lambda r: r["cards"][0].update(suggestions=None), "$.cards[0].suggestions"),
        (lambda r: r["cards"][0].update(links=None), "$.cards[0].links"),
        (lambda r: r["cards"][0].update(overrideReasons=None), "$.cards[0].overrideReasons"),
        (lambda r: r["cards"][0]["source"].update(url=None), "$.cards[0].source.url"),
        (lambda r: r["cards"][0]["source"]["topic"].update(display=None), "$.cards[0].source.topic.display"),
        (lambda r: r["cards"][0]["links"][0].update(appContext=None), "$.cards[0].links[0].appContext"),
        (
            lambda r: r["cards"][0]["suggestions"][0].update(isRecommended=None),
            "$.cards[0].suggestions[0].isRecommended",
        ),
        (
            lambda r: r["cards"][0]["suggestions"][0]["actions"][0].update(resourceId=None),
            "$.cards[0].suggestions[0].actions[0].resourceId",
        ),
        (
            lambda r: r["cards"][0]["suggestions"][0]["actions"][1]["resource"].update(intent=None),
            "$.cards[0].suggestions[0].actions[1].resource.intent",
        ),
        (
            lambda r: r["cards"][0]["suggestions"][0]["actions"][1]["resource"]["note"][0].update(text=None),
            "$.cards[0].suggestions[0].actions[1].resource.note[0].text",
        ),
        (
            lambda r: r["cards"][0].update(extension={"org.example.x": None}),
            '$.cards[0].extension["org.example.x"]',
        ),
    ],
)
def test_response_nulls_rejected(mutate: Any, path: str) -> None:
    response = {
        "cards": [
            card(
                suggestions=[suggestion("e56e1945-20b3-4393-8503-a1a20fd73152")],
                selectionBehavior="at-most-one",
                links=[
                    {
                        "label": "App",
                        "url": "https://smart.example.org/launch",
                        "type": "smart",
                        "appContext": "x",
                    }
                ],
            )
        ]
    }
    response["cards"][0]["suggestions"][0]["actions"].append(
        {
            "type": "create",
            "description": "Create a note",
            "resource": {
                "resourceType": "MedicationRequest",
                "status": "draft",
                "intent": "order",
                "note": [{"text": "a"}],
            },
        }
    )
    assert_valid("response", response)
    mutate(response)
    assert_invalid("response", response, path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("detail", ""), ("suggestions", []), ("links", []), ("overrideReasons", [])],
)
def test_response_empty_optional_values_rejected(field: str, value: Any) -> None:
    bad = card(**{field: value}, selectionBehavior="any")
    assert_invalid("response", {"cards": [bad]}, f"$.cards[0].{field}")


def test_response_empty_system_actions_rejected_but_empty_cards_allowed() -> None:
    assert_valid("response", {"cards": []})
    assert_invalid("response", {"cards": [], "systemActions": []}, "$.systemActions")


def test_response_unknown_member_rejected_but_extension_allowed() -> None:
    assert_invalid("response", {"cards": [card(id="example-card")]}, "$.cards[0]", "unexpected property 'id'")
    assert_valid("response", {"cards": [card(extension={"org.example.x": {"a": [1, True]}})]})


def test_response_system_action_needs_description() -> None:
    doc = example("system-actions-response.json")
    del doc["systemActions"][0]["description"]
    assert_invalid("response", doc, "$.systemActions[0]", "'description'")


@pytest.mark.parametrize(
    ("action", "missing"),
    [
        ({"type": "create", "description": "d"}, "'resource'"),
        ({"type": "update", "description": "d"}, "'resource'"),
        ({"type": "delete", "description": "d"}, "'resourceId'"),
    ],
)
def test_response_action_conditional_fields(action: dict[str, Any], missing: str) -> None:
    assert_invalid("response", {"cards": [], "systemActions": [action]}, "$.systemActions[0]", missing)


def test_response_action_resource_needs_resource_type() -> None:
    action = {"type": "create", "description": "d", "resource": {"id": "x"}}
    assert_invalid("response", {"cards": [], "systemActions": [action]}, "'resourceType'")


@pytest.mark.parametrize("link_type", ["relative", None])
def test_response_link_type(link_type: Any) -> None:
    links = [{"label": "L", "url": "https://example.org", "type": link_type}]
    assert_invalid("response", {"cards": [card(links=links)]}, "$.cards[0].links[0].type")


def test_response_link_url_must_be_absolute() -> None:
    links = [{"label": "L", "url": "/relative/path", "type": "absolute"}]
    assert_invalid("response", {"cards": [card(links=links)]}, "$.cards[0].links[0].url")


def test_response_autolaunchable_is_boolean() -> None:
    doc = example("cards-response-autolaunchable.json")
    doc["cards"][0]["links"][0]["autolaunchable"] = "true"
    assert_invalid("response", doc, "$.cards[0].links[0].autolaunchable")


def test_response_source_label_required() -> None:
    assert_invalid(
        "response", {"cards": [card(source={"url": "https://example.org"})]}, "$.cards[0].source", "'label'"
    )


def test_response_card_uuid_must_be_uuid() -> None:
    assert_invalid("response", {"cards": [card(uuid="card-1")]}, "$.cards[0].uuid")


def test_published_autolaunchable_example_really_lacks_indicator() -> None:
    """The copy adds indicator (see README); without it the card fails: the schema was not loosened."""
    doc = example("cards-response-autolaunchable.json")
    del doc["cards"][0]["indicator"]
    assert_invalid("response", doc, "$.cards[0]", "'indicator'")


# --- feedback --------------------------------------------------------------------------------------


def test_feedback_accepted_without_accepted_suggestions() -> None:
    doc = example("feedback-accepted.json")
    del doc["feedback"][0]["acceptedSuggestions"]
    assert_invalid("feedback", doc, "$.feedback[0]", "'acceptedSuggestions'")


def test_feedback_accepted_suggestion_needs_id() -> None:
    doc = example("feedback-accepted.json")
    doc["feedback"][0]["acceptedSuggestions"] = [{}]
    assert_invalid("feedback", doc, "$.feedback[0].acceptedSuggestions[0]", "'id'")


def test_feedback_overridden_reason_code_and_system_only_accepted() -> None:
    doc = example("feedback-overridden.json")
    doc["feedback"][0]["overrideReason"] = {
        "reason": {"code": "x", "system": "https://ivig-cds.example.org/o"}
    }
    assert_valid("feedback", doc)


def test_feedback_overridden_with_comment_only_accepted() -> None:
    doc = example("feedback-overridden.json")
    doc["feedback"][0]["overrideReason"] = {"userComment": "not relevant"}
    assert_valid("feedback", doc)


@pytest.mark.parametrize("field", ["code", "system"])
def test_feedback_override_reason_needs_code_and_system(field: str) -> None:
    doc = example("feedback-overridden-with-reason.json")
    del doc["feedback"][0]["overrideReason"]["reason"][field]
    assert_invalid("feedback", doc, "$.feedback[0].overrideReason.reason", f"'{field}'")


@pytest.mark.parametrize("field", ["card", "outcome", "outcomeTimestamp"])
def test_feedback_required_fields(field: str) -> None:
    doc = example("feedback-overridden.json")
    del doc["feedback"][0][field]
    assert_invalid("feedback", doc, "$.feedback[0]", f"'{field}'")


def test_feedback_outcome_values() -> None:
    doc = example("feedback-overridden.json")
    doc["feedback"][0]["outcome"] = "ignored"
    assert_invalid("feedback", doc, "$.feedback[0].outcome")


def test_feedback_must_not_be_empty() -> None:
    assert_invalid("feedback", {"feedback": []}, "$.feedback")
    assert_invalid("feedback", {}, "'feedback'")


def test_feedback_accepts_unknown_fields_and_several_items() -> None:
    doc = example("feedback-overridden.json")
    doc["feedback"].append(example("feedback-accepted.json")["feedback"][0])
    doc["feedback"][0]["org.example.extra"] = True
    assert_valid("feedback", doc)


# --- discovery -------------------------------------------------------------------------------------


def test_discovery_empty_services_allowed() -> None:
    assert_valid("discovery", {"services": []})


@pytest.mark.parametrize("field", ["hook", "description", "id"])
def test_discovery_required_fields(field: str) -> None:
    doc = example("discovery-response.json")
    del doc["services"][1][field]
    assert_invalid("discovery", doc, "$.services[1]", f"'{field}'")


def test_discovery_prefetch_values_are_strings() -> None:
    doc = example("discovery-response.json")
    doc["services"][1]["prefetch"]["patient"] = {"resourceType": "Patient"}
    assert_invalid("discovery", doc, "$.services[1].prefetch.patient", "expected string")


def test_discovery_rejects_nulls_and_accepts_extension() -> None:
    doc = example("discovery-response.json")
    doc["services"][0]["extension"] = {"com.example.clientConformance": "http://hooks.example.org/x"}
    assert_valid("discovery", doc)
    doc["services"][0]["title"] = None
    assert_invalid("discovery", doc, "$.services[0].title")
