"""Load the clinical parameters (``cards/clinical-parameters.yaml``) for the rules."""

from __future__ import annotations

from pathlib import Path

import yaml

from cds_service.clinical.parameters import ClinicalParameters, ParameterError
from cds_service.engine.content.catalog import ContentError

PARAMETERS_FILE = "clinical-parameters.yaml"
ASSERTION_CUES_FILE = "assertion-cues.yaml"


def load_parameters(cards_dir: str | Path) -> ClinicalParameters:
    path = Path(cards_dir) / PARAMETERS_FILE
    if not path.exists():
        raise ContentError(f"{PARAMETERS_FILE} is missing")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return ClinicalParameters.from_mapping(data)
    except (yaml.YAMLError, ParameterError) as exc:
        raise ContentError(f"{PARAMETERS_FILE}: {exc}") from None
