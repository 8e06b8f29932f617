"""The README's set-up commands are the ones CI runs, and the set-up scripts at least parse.

A real install from a fresh clone takes minutes and changes the machine, so it is checked by hand
(see scripts/install); these checks are cheap.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.helpers import ROOT

SCRIPTS = ["scripts/install", "scripts/test", ".ci/run"]


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)]


def _commands(script: str) -> list[str]:
    lines = (ROOT / script).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_readme_gives_install_then_test() -> None:
    install, test = _setup_commands()
    assert install.startswith("./scripts/install && meshserial "), install
    assert "\n" not in test, test


def test_ci_runs_the_readme_test_command_after_installing() -> None:
    _, test = _setup_commands()
    commands = _commands(".ci/run")
    assert commands[-1] == test
    assert "./scripts/install" in commands[:-1]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_strict_bash_that_parses(script: str) -> None:
    path = ROOT / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    assert path.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in _commands(script)
    result = subprocess.run(
        ["bash", "-n", str(path)], capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 0, result.stderr
