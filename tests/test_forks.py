"""The shared fork server's CLI calls: the same exit status, stdout and stderr as
``python -m dist_contrast.cli`` in a fresh interpreter, in the folder and environment given."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.forks import PRELOAD, cli_command, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _fresh(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(args), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [
    ["config", "synthetic.yaml", "loss.temperature=0.3"],  # stdout, a path relative to cwd
    ["train", "missing.yaml"],                              # a refusal: exit 2, one line
    ["mine", "bm25", "--queries", "q.jsonl", "--margin", "-1", "-o", "o.jsonl"],
    ["no-such-command"],                                    # argparse's own exit 2
])
def test_a_call_answers_as_a_fresh_interpreter_does(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "synthetic.yaml").write_text((ROOT / "configs" / "synthetic.yaml").read_text())
    env = cli_env(tmp_path / "mlflow.db")
    forked = run_cli(args, cwd=tmp_path, env=env, timeout=120)
    fresh = _fresh(args, tmp_path, env)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        fresh.returncode, fresh.stdout, fresh.stderr)
    assert forked.args == fresh.args


def test_an_environment_read_at_start_up_gets_a_fresh_interpreter(tmp_path: Path) -> None:
    # A sitecustomize on PYTHONPATH runs only when an interpreter starts: the call must start one.
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import sys\nprint('started fresh', file=sys.stderr)\n")
    env = cli_env(tmp_path / "mlflow.db", PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{ROOT}")
    forked = run_cli(["train", "missing.yaml"], cwd=tmp_path, env=env, timeout=120)
    assert forked.returncode == 2
    assert forked.stderr.splitlines()[0] == "started fresh"
    assert "config file 'missing.yaml' not found" in forked.stderr


def test_a_call_past_its_timeout_is_killed(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import os, time\nopen('pid', 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    env = cli_env(tmp_path / "mlflow.db", PYTHONPATH=str(tmp_path / "site"))
    with pytest.raises(subprocess.TimeoutExpired):
        run_cli(["config", "x.yaml"], cwd=tmp_path, env=env, timeout=3)
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()


def test_what_the_server_preloads_says_nothing_when_imported() -> None:
    """A module that printed or warned on import would do so in a fresh CLI process but not in
    a forked one, hiding a second line from the tests that expect one."""
    imports = "; ".join(f"import {name}" for name in PRELOAD)
    done = subprocess.run([sys.executable, "-c", imports], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr
