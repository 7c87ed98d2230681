"""The code stays formatted and lint-clean (ruff), the workflows pass actionlint, and CI runs the
README's test command: what a reviewer would check."""

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.harness import ROOT


def ruff(*args: str) -> subprocess.CompletedProcess:
    # The ruff installed with the test extra, beside this Python, before any other on PATH.
    beside = Path(sys.executable).with_name("ruff")
    exe = str(beside) if beside.exists() else shutil.which("ruff") or "ruff"
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_check() -> None:
    result = ruff("check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = ruff("format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("Install everything and run the tests", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith(block.strip())


def test_workflows_pass_actionlint() -> None:
    beside = Path(sys.executable).with_name("actionlint")
    exe = str(beside) if beside.exists() else shutil.which("actionlint") or "actionlint"
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    assert {Path(p).name for p in workflows} == {"ci.yml", "release.yml"}
    result = subprocess.run([exe, *workflows], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
