"""refresh_report: rebuild the static HTML review report from the DuckDB file."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_link_artifact

from radlint.tasks import report


@flow(name="refresh_report")
def refresh_report(db: str, out: str) -> str:
    """Write the report for ``db`` to ``out`` and publish a link artifact to it."""
    path = report.write_report(db, out)
    create_link_artifact(key="radlint-report", link=path.resolve().as_uri(), description="radlint review report")
    return str(path)
