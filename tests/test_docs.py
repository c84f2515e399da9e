"""The repository documents itself: no citations of files outside it, cards about the shipped model."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("radlint", "flows", "tasks", "models", "sql", "tests", "bench", "docs", ".ci")
SUFFIXES = {".py", ".sql", ".md", ".yaml", ".yml", ".toml", ".sh", ".csv", ""}
OUTSIDE = "DESIGN" + ".md"  # the design notes the project started from live outside the repository


def _text_files():
    yield from (ROOT / name for name in ("README.md", "prefect.yaml", "pyproject.toml"))
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in SUFFIXES and "_work" not in path.parts and "__pycache__" not in path.parts:
                yield path


def test_nothing_cites_design_notes_outside_the_repository():
    bad = [str(p.relative_to(ROOT)) for p in _text_files() if OUTSIDE in p.read_text(errors="replace")]
    assert not bad, f"cite docs/architecture.md instead of {OUTSIDE}: {bad}"


def test_architecture_doc_names_every_contract_table():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for table in ("images", "predictions", "findings", "skipped", "runs", "embeddings", "group_findings"):
        assert f"`{table}`" in text, table


@pytest.mark.parametrize("notes", sorted((ROOT / "models" / "cards").glob("*-notes.md")), ids=lambda p: p.name)
def test_a_card_carries_its_notes_only_up_to_the_marker(notes):
    from radlint.models.card import NOTES_END

    card = notes.with_name(notes.name.replace("-notes.md", ".md")).read_text()
    kept, _, experiments = notes.read_text().partition(NOTES_END)
    assert card.rstrip().endswith(kept.strip()), "the card's hand-written part differs from its notes file"
    if experiments.strip():
        first = experiments.strip().splitlines()[0]
        assert first not in card, f"{first!r} is below the marker: it belongs to the notes, not the card"


def test_ci_runs_every_test_and_the_readme_names_the_fast_suite():
    readme = (ROOT / "README.md").read_text()
    ci_command = readme.split("<!-- test-command -->", 1)[1].split("```")[1].strip()
    # .ci/run executes this line: a marker filter here would silently drop the slow tests from CI
    assert ci_command.endswith(".venv/bin/python -m pytest"), ci_command
    assert '.venv/bin/python -m pytest -m "not slow"' in readme


def test_readme_says_how_to_run_a_deployment_now_in_the_venv_with_analytics_off():
    """What a newcomer missed in the deployment docs (issue 23): starting a run now, with names that
    exist; that the commands need the virtual environment; how Prefect's analytics stay off."""
    import re

    import yaml

    from radlint.flows.audit_lake import audit_lake

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    service = readme[readme.index("## Running it as a service"):]
    service = service[:service.index("\n## ", 1)]
    deployments = {d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    runs = re.findall(r"prefect deployment run '([^'/]+)/([^']+)'", service)
    assert runs, "no `prefect deployment run` in the deployment docs"
    for flow_name, deployment in runs:
        assert flow_name == audit_lake.name and deployment in deployments
    assert "source .venv/bin/activate" in service and ".venv/bin/prefect" in service
    assert "PREFECT_SERVER_ANALYTICS_ENABLED=false" in service and "DO_NOT_TRACK=1" in service
