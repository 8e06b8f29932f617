"""Lint, format and type checks run as part of the suite, so one command checks everything."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, timeout=300)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (pip install -e '.[test]')")
def test_ruff_lint_and_format() -> None:
    lint = _run("ruff", "check", "meshserial", "tests", "benchmarks")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run("ruff", "format", "--check", "meshserial", "tests", "benchmarks")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


# The tests of the sans-IO core (tests/rendezvous/test_records.py is the signed records' own test). Only
# these count: a proto module is covered by tests of it, not by a system test that happens to pass through.
PROTO_TESTS = ("tests/proto", "tests/test_bech32.py", "tests/rendezvous/test_records.py")


@pytest.mark.timeout(300)
def test_proto_branch_coverage_is_complete(tmp_path: Path) -> None:
    """Every line and branch of meshserial/proto/ is exercised by the proto tests ([tool.coverage]:
    branch coverage, fail_under = 100).

    A run of its own rather than coverage over the whole suite: it gives the same answer whatever
    subset of the suite was asked for, a partial run (./scripts/test tests/system/x.py) never trips
    over a threshold only the full run can meet, and it costs about 20 s once, less than tracing the
    whole suite would add (about 40 s). The hypothesis tests are left out (they ran in the suite
    itself): a figure that depends on random examples would come and go, so every branch must be
    reached by a plain test.
    """
    if importlib.util.find_spec("pytest_cov") is None:
        pytest.fail("pytest-cov is not installed: run ./scripts/install (pip install -e '.[test]')")
    env = dict(os.environ, COVERAGE_FILE=str(tmp_path / ".coverage"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not hypothesis",
         "--cov", "--cov-report=term-missing:skip-covered", *PROTO_TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=280,
    )  # fmt: skip
    report = result.stdout[result.stdout.rfind("coverage: platform") :]
    assert result.returncode == 0, report or result.stdout[-4000:] + result.stderr[-4000:]
    assert re.search(r"Required test coverage of 100(\.0+)?% reached", report), report


def test_ci_requires_the_noise_vectors() -> None:
    """.ci/run makes the Noise vector tests fail instead of skip when the vectors are missing."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "export MESHSERIAL_REQUIRE_VECTORS=1" in [line.strip() for line in ci]


@pytest.mark.parametrize(
    ("env", "code", "summary"),
    [
        ({}, 0, "2 skipped"),
        ({"MESHSERIAL_REQUIRE_VECTORS": "1"}, 1, "2 errors"),
        ({"CI": "true"}, 1, "2 errors"),
        ({"CI": "true", "MESHSERIAL_REQUIRE_VECTORS": "0"}, 0, "2 skipped"),
    ],
    ids=["developer", "ci-run", "ci-system", "opted-out"],
)
def test_missing_noise_vectors_skip_here_and_fail_in_ci(
    tmp_path: Path, env: dict[str, str], code: int, summary: str
) -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "MESHSERIAL_REQUIRE_VECTORS")}
    base["MESHSERIAL_NOISE_VECTORS"] = str(tmp_path / "absent")
    tests = [
        "tests/proto/test_noise.py::test_vector_file_covers_the_required_patterns",
        "tests/proto/test_noise.py::test_vector",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT, env=base | env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == code, result.stdout + result.stderr
    assert summary in result.stdout.splitlines()[-1], result.stdout
    assert "Noise vectors absent" in result.stdout
