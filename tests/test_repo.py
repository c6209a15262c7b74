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
    for name in ("torchvision", "torchaudio", "timm", "open_clip", "audiocraft"):
        assert f"\n{name}" not in lock
