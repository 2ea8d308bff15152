"""Record cards as issued by the service (feedback is accepted only for cards this service issued
to the same client: issue 15 item 9), the way the hook endpoint records them before answering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Flask

from cds_service.engine.store import IssuedCard


def issue_cards(app: Flask, service_id: str, *card_uuids: str, iss: str | None = None,
                hours_ago: float = 0.0) -> None:
    store = app.extensions["cds_runtime"].store
    at = datetime.now(UTC) - timedelta(hours=hours_ago)
    store.record_issued([IssuedCard(card_uuid=u, issued_at=at, service_id=service_id, client_iss=iss or "",
                                    patient_hmac="0" * 64, order_hmac="0" * 64, card_id="test-card", version="1",
                                    content_hash="0" * 64, facts_fingerprint="0" * 64)
                         for u in card_uuids])
