"""The README's three commands are the ones CI runs, and setup keeps forbidden packages out."""

from __future__ import annotations

import re

from conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## The three commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_has_exactly_setup_main_job_and_tests():
    setup, main_job, tests = readme_commands()
    assert setup == "bash setup.sh"
    assert "dvc repro" in main_job
    assert "pytest" in tests


def test_ci_runs_the_readme_setup_and_test_commands():
    setup, _, tests = readme_commands()
    ci = (REPO / ".ci" / "run").read_text()
    assert f"\n{setup}\n" in ci
    assert f"\n{tests}\n" in ci


def test_forbidden_packages_are_not_pinned():
    lock = (REPO / "requirements.lock").read_text().lower()
    for name in ("torchaudio", "audiocraft"):
        assert f"\n{name}" not in lock


def imports_of(path) -> set[str]:
    """Every module a Python file imports (top level or inside functions)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_library_sits_below_the_cli_and_the_stages():
    """pipeline/ never imports the CLI or a stage; vocal removal and acquisition never the evaluation package."""
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        if path.name == "cli.py" and path.parent.name == "pipeline":
            continue
        imported = imports_of(path)
        bad = {m for m in imported if m == "pipeline.cli" or m == "stages" or m.startswith("stages.")}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"
    for path in [REPO / "pipeline" / "separate.py", *sorted((REPO / "pipeline" / "acquire").rglob("*.py"))]:
        bad = {m for m in imports_of(path) if m == "pipeline.metrics" or m.startswith("pipeline.metrics.")}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_the_stages_report_errors_without_the_cli():
    for path in sorted((REPO / "stages").glob("*.py")):
        assert "pipeline.cli" not in imports_of(path), path.name
