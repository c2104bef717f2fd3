"""The local Ray runtime finds itself: a ``ray_current_cluster`` file left by an earlier
``ray start`` (stale here, its GCS gone) must not be what the runtime's own processes look up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.services import MARKER, marked

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, os, sys
from dist_contrast.config import load_config
from dist_contrast.driver import runtime
from dist_contrast.driver.plan import make_plan

cfg = load_config(sys.argv[1], ["trainer.num_workers=1"])
ray = runtime.connect(make_plan(cfg, local=True))

@ray.remote(num_cpus=0)
def looked_up():
    from ray._private.services import get_ray_address_from_environment
    return get_ray_address_from_environment(None, None)  # as Ray Train's cleaner does

seen = ray.get(looked_up.remote())
own = ray.get_runtime_context().gcs_address
lookup_dir = runtime.lookup_dir()
runtime.shutdown_ray()
print(json.dumps({"seen": seen, "own": own, "lookup_dir": lookup_dir,
                  "lookup_left": os.path.exists(lookup_dir),
                  "ray_tmpdir": os.environ.get("RAY_TMPDIR")}))
"""


@pytest.fixture
def short_temp() -> Iterator[Path]:
    """A short directory: Ray's unix socket paths (at most 107 bytes) live under it."""
    path = Path(tempfile.mkdtemp(prefix="dc-rt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_local_runtime_looks_itself_up_not_a_stale_cluster_file(
    tmp_path: Path, short_temp: Path
) -> None:
    temp = short_temp
    (temp / "ray").mkdir(parents=True)
    (temp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # nobody listens there
    marker = f"runtime-lookup-{uuid.uuid4().hex}"
    env = dict(os.environ, RAY_TMPDIR=str(temp), DS_ACCELERATOR="cpu",
               PYTHONPATH=str(ROOT), **{MARKER: marker})
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "configs/synthetic.yaml")],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
    finally:  # no Ray process outlives the test, whatever happened
        for proc in marked(marker):
            proc.kill()
        psutil.wait_procs(marked(marker), timeout=10)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["seen"] == result["own"]  # not 127.0.0.1:9
    assert not result["lookup_left"]  # the private lookup directory is gone after shutdown
    assert result["ray_tmpdir"] == str(temp)  # the caller's RAY_TMPDIR is restored
    # Ray's sessions stay where Ray puts them by default: under RAY_TMPDIR/ray.
    assert any((temp / "ray").glob("session_*"))
