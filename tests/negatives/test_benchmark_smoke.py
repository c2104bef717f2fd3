import importlib.util
import sys
from pathlib import Path


def test_mining_benchmark_quick_runs(capsys):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "mining.py"
    spec = importlib.util.spec_from_file_location("mining_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--skip-memory", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "recall@k" in out and "of training time" in out
