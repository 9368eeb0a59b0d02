"""The README's commands and code work as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block(after: str, language: str) -> str:
    return README.split(after, 1)[1].split(f"```{language}\n", 1)[1].split("\n```", 1)[0]


def test_readme_test_command_is_what_ci_runs() -> None:
    """CI runs the README's test command literally, and installs nothing else."""
    command = _block("**Run the tests:**", "bash").strip()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci
    assert [line for line in ci if "pip install" in line] == [command]


def test_the_python_snippet_runs(tmp_path: Path) -> None:
    snippet = _block("From Python, the stages take", "python")
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "work" / "submissions" / "submission.tsv").is_file()
    losses = [float(line) for line in done.stdout.splitlines() if line.replace(".", "", 1).isdigit()]
    assert len(losses) == 1 and 0 < losses[0] < 1
