"""The Makefile's targets: each listed by ``make help``, and each in .PHONY has a rule."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-C", str(ROOT), "--no-print-directory", *args], capture_output=True, text=True
    )


def phony() -> list[str]:
    line = next(x for x in (ROOT / "Makefile").read_text().splitlines() if x.startswith(".PHONY:"))
    return line.split(":", 1)[1].split()


def test_make_help_lists_every_target():
    """``make help`` was "No rule to make target 'help'"."""
    done = make("help")
    assert done.returncode == 0, done.stderr
    listed = re.findall(r"^  make (\S+)", done.stdout, flags=re.M)
    assert sorted(listed) == sorted(phony())


def test_every_phony_target_has_a_rule_and_lint_runs_ruff():
    """``lint`` stood in .PHONY without a rule: ``make lint`` did nothing and exited 0."""
    for target in phony():
        done = make("-n", target)
        assert done.returncode == 0 and done.stdout.strip(), (target, done.stderr)
    commands = make("-n", "lint").stdout
    assert "ruff format --check" in commands and "ruff check" in commands
