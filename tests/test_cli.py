"""CLI: every user error exits 2 with one line on stderr and no traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dist_contrast.cli import main
from tests.forks import cli_command, run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_documents_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "config", "losses"):
        assert command in out
    for command in ("train", "config", "losses"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "usage: dist-contrast " + command in capsys.readouterr().out


def test_config_prints_resolved_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", str(ROOT / "configs/synthetic.yaml"), "loss.temperature=0.25"]) == 0
    assert "temperature: 0.25" in capsys.readouterr().out


def test_losses_lists_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["losses"]) == 0
    assert "info_nce" in capsys.readouterr().out.split()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "configs/missing.yaml"], "not found"),
        (["train", "configs/synthetic.yaml", "loss.temperature=-0.1"], "loss.temperature"),
        (["train", "configs/synthetic.yaml", "trainer.num_wrkers=3"], "unknown key"),
        (["train", "configs/digits.yaml", "data.name=file", "data.path=/nope/x.npy",
          "model.name=mlp", "data.test_fraction=0.2"], "x.npy"),
        (["train", "configs/synthetic.yaml", "oops"], "key=value"),
    ],
)
def test_user_errors_exit_2_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    # A process of its own: what a user sees, including that no traceback reaches stderr.
    proc = run_cli(args, cwd=ROOT, timeout=120,
                   env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dist-contrast: error:")
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.ray  # the MLflow check runs while a local Ray starts
def test_unreachable_mlflow_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        cli_command(["train", "configs/synthetic.yaml"]),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot reach the MLflow tracking store" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_collapse_alarm_is_one_line_with_the_usual_fixes() -> None:
    from dist_contrast.cli import _warnings

    assert _warnings({"eval/collapsed": 0.0, "eval/uniformity": -2.0}) == []
    found = _warnings({"eval/collapsed": 1.0, "eval/mean_similarity": 0.93,
                       "eval/positive_similarity": 0.9995, "eval/uniformity": -0.3})
    assert len(found) == 1 and "\n" not in found[0]
    assert "collapse alarm" in found[0] and "0.930" in found[0] and "0.9995" in found[0]
    for fix in ("model.batch_norm", "optimizer.lr",
                "loss.temperature"):
        assert fix in found[0]


def test_every_command_dispatches_to_its_own_handler() -> None:
    import argparse

    from dist_contrast import cli

    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    handlers = {name: sub.get_default("handler") for name, sub in commands.choices.items()}
    assert set(handlers) == {"train", "config", "losses", "embed", "search", "mine", "evaluate",
                             "sweep", "compare", "submit", "jobs", "data"}
    assert all(callable(h) for h in handlers.values()), handlers
    assert len({id(h) for h in handlers.values()}) == len(handlers)  # no shared dispatcher
    args = parser.parse_args(["jobs", "status", "abc"])
    assert args.handler is cli._jobs and args.job_id == "abc"


def test_no_command_prints_the_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: dist-contrast" in capsys.readouterr().out


def test_the_help_sends_cluster_users_to_submit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "dist-contrast submit configs/moco.yaml --address http://head:8265" in out
    assert "ray job submit" not in out and "launch/submit.sh" not in out
