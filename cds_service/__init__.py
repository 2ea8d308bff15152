"""ivig-cds: a CDS Hooks 2.0 service for IVIG in antisynthetase-syndrome interstitial lung disease."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["create_app", "__version__"]

if TYPE_CHECKING:
    from cds_service.http.app import create_app as create_app


def __getattr__(name: str) -> Any:
    # Lazy so that `import cds_service.clinical` stays free of Flask.
    if name == "create_app":
        from cds_service.http.app import create_app

        return create_app
    raise AttributeError(name)
