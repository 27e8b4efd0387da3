"""The README's two commands are what CI runs, and what they name exists."""

from __future__ import annotations

import re

from helpers.paths import REPO


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_the_readme_commands_verbatim():
    setup_and_run, tests = _readme_commands()
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert setup_and_run in ci_lines and tests in ci_lines
    assert ci_lines.index(setup_and_run) < ci_lines.index(tests)


def test_readme_commands_name_files_that_exist():
    for command in _readme_commands():
        for token in command.split():
            if token.startswith(("./", "configs/")):
                assert (REPO / token).exists(), token
