"""Authoring: the tools that look after the card content, split by job.

- ``check.py`` — ``cards check``, the content linter (``front_matter.py``: front matter by the JSON
  Schema ``schemas/card-front-matter.schema.json``; ``renderings.py``: every card rendered and checked)
- ``approve.py`` — ``cards approve``, approvals bound to the content hash
- ``packet.py`` — the review packet behind ``/review`` and its cache; ``export.py`` — ``cards export``
- ``report.py`` — ``report``, shown / accepted / overridden per card and version
- ``fixture_requests.py`` — ``fixtures build`` (devtools' job; here until it moves)
- ``calls.py`` — fixture patients through the real pipeline; ``problems.py`` — what the checks report
- ``cli.py`` — the argparse definitions of these commands (``add_commands``)

Compliance reviewers must be able to read every word a clinician can see, know which version is live
and who approved it, and prove afterwards what was shown.  No clinical sentence lives here.
"""

from cds_service.authoring.approve import Approval, approve, with_approval
from cds_service.authoring.check import check, format_report
from cds_service.authoring.cli import add_commands
from cds_service.authoring.export import export, render_review_html
from cds_service.authoring.fixture_requests import build_fixture_requests, fixture_requests
from cds_service.authoring.packet import bibliographic, review_packet
from cds_service.authoring.problems import ERROR, INFO, WARNING, GovernanceError, Problem
from cds_service.authoring.renderings import synthetic_variables
from cds_service.authoring.report import format_rows, report_rows

__all__ = ["ERROR", "INFO", "WARNING", "Approval", "GovernanceError", "Problem", "add_commands", "approve",
           "bibliographic", "build_fixture_requests", "check", "export", "fixture_requests", "format_report",
           "format_rows", "render_review_html", "report_rows", "review_packet", "synthetic_variables",
           "with_approval"]
