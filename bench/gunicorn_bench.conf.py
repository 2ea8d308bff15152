"""The production ``gunicorn.conf.py``, read as it is, with one change: an empty
``GUNICORN_ACCESSLOG`` means "no access log".

The production file passes ``GUNICORN_ACCESSLOG=""`` through as ``accesslog = ""``, which gunicorn
refuses at start-up ("'' isn't writable"); ``None`` is gunicorn's "off".  Once the production file
maps "" to None itself, this shim changes nothing.  Workers, threads, worker class, timeouts and
keep-alive all come from the production file.
"""

import runpy
from pathlib import Path
from types import ModuleType

_production = runpy.run_path(str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py"))
globals().update({name: value for name, value in _production.items()
                  if not name.startswith("_") and not isinstance(value, ModuleType)})
accesslog = _production.get("accesslog") or None
