"""What `dist-contrast submit` decides before it talks to a cluster: the job server's address,
where the token comes from, the runtime environment, the submission; and the one-line answers
for a refusing MLflow server and a node-local output_dir on a multi-node cluster. The real
cluster is in test_submit.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from mlflow.exceptions import MlflowException

from dist_contrast import jobs
from dist_contrast.driver import address
from dist_contrast.errors import UserError
from dist_contrast.preflight import check_storage, filesystem_type
from dist_contrast.tracking import refusal

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = str(ROOT / "configs" / "synthetic.yaml")


def test_the_job_server_address_comes_from_the_flag_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    assert address.job_server_address() == address.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert address.job_server_address() == "http://head:8265"
    assert address.job_server_address("https://other:443") == "https://other:443"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api:8265")
    assert address.job_server_address() == "http://api:8265"
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS")
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    with pytest.raises(UserError, match="is a cluster \\(GCS\\) address; jobs go to the head's"):
        address.job_server_address()
    with pytest.raises(UserError, match="is not a job server URL"):
        address.job_server_address("head:8265")


def test_the_token_source_follows_rays_order_and_never_holds_the_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    assert address.token_source({"HOME": str(home)}) is None
    (home / ".ray" / "auth_token").write_text("secret-a\n")
    assert address.token_source({"HOME": str(home)}) == "~/.ray/auth_token"
    other = tmp_path / "token"
    other.write_text("secret-b")
    assert address.token_source({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(other)}) == (
        f"RAY_AUTH_TOKEN_PATH={other}")
    assert address.token_source({"HOME": str(home), "RAY_AUTH_TOKEN": "secret-c",
                                 "RAY_AUTH_TOKEN_PATH": str(other)}) == "RAY_AUTH_TOKEN"
    with pytest.raises(UserError, match="RAY_AUTH_TOKEN_PATH=.*cannot be read"):
        address.token_source({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UserError, match="is empty"):
        address.token_source({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")})


def test_token_mode_is_turned_on_only_with_a_token_and_no_chosen_mode(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    env = {"HOME": str(home)}
    assert address.enable_token_auth_if_available(env) is None and "RAY_AUTH_MODE" not in env
    (home / ".ray" / "auth_token").write_text("\n")  # an empty file is no token
    assert address.enable_token_auth_if_available(env) is None and "RAY_AUTH_MODE" not in env
    env["RAY_AUTH_TOKEN"] = "secret"
    assert address.enable_token_auth_if_available(env) == "RAY_AUTH_TOKEN"
    assert env["RAY_AUTH_MODE"] == "token"
    chosen = {"HOME": str(home), "RAY_AUTH_TOKEN": "secret", "RAY_AUTH_MODE": "disabled"}
    address.enable_token_auth_if_available(chosen)
    assert chosen["RAY_AUTH_MODE"] == "disabled"  # the user's choice stays


def test_the_cluster_to_join_is_ray_address_unless_local() -> None:
    assert address.cluster_address({}) is None
    assert address.cluster_address({"RAY_ADDRESS": " local "}) is None
    assert address.cluster_address({"RAY_ADDRESS": "head:6379"}) == "head:6379"


def test_an_unreachable_or_wrong_cluster_address_is_one_line() -> None:
    address.check_reachable("auto")  # Ray looks it up itself
    with pytest.raises(UserError, match="is a job-server URL; send the run there with "
                                        "`dist-contrast submit CONFIG --address URL`"):
        address.check_reachable("http://head:8265")
    with pytest.raises(UserError, match="cannot reach the Ray cluster at RAY_ADDRESS=127.0.0.1:9"):
        address.check_reachable("127.0.0.1:9", timeout=2)
    with pytest.raises(UserError, match="has no valid port"):
        address.check_reachable("head:notaport")


def test_the_default_run_name_of_a_submission_is_the_trainings() -> None:
    made = jobs.prepare(SYNTHETIC, [], {}, environ={})
    assert re.fullmatch(r"synthetic-infonce-\d{8}-\d{6}", made.cfg.experiment.run_name or "")


def test_the_shipped_runtime_env_uploads_this_package(monkeypatch: pytest.MonkeyPatch) -> None:
    env, source = jobs.load_runtime_env(ROOT / "launch" / "runtime_env.yaml")
    assert source.endswith("runtime_env.yaml")
    assert env["py_modules"] == [str(ROOT / "dist_contrast")]
    assert env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == jobs.STOP_WAIT_S
    assert "working_dir" not in env
    monkeypatch.chdir(ROOT)  # the default: launch/runtime_env.yaml when it is here
    assert jobs.load_runtime_env(None) == (env, str(jobs.DEFAULT_RUNTIME_ENV))


def test_the_default_runtime_env_outside_a_checkout_is_the_installed_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env, source = jobs.load_runtime_env(None)
    assert env == {} and "installed on the cluster" in source


@pytest.mark.parametrize(("text", "message"), [
    ("working_dir: .\n", "sets working_dir: dist-contrast submit makes the job's working"),
    ("py_modules: [../nowhere]\n", "py_modules entry ../nowhere does not exist"),
    ("env_vars: [A, B]\n", "env_vars must be a mapping"),
    ("- a list\n", "must be a mapping of Ray runtime_env keys"),
    ("env_vars: {A: [\n", "is not valid YAML"),
])
def test_a_bad_runtime_env_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "env.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("(", "\\(")) as caught:
        jobs.load_runtime_env(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="cannot read it"):
        jobs.load_runtime_env(tmp_path / "missing.yaml")


def test_a_submission_carries_the_resolved_config_and_the_tracking_settings() -> None:
    shell = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_TRACKING_USERNAME": "ana",
             "MLFLOW_TRACKING_PASSWORD": "pw", "UNRELATED": "x"}
    runtime = {"pip": ["x"], "env_vars": {"MLFLOW_TRACKING_URI": "http://in-cluster:5000"}}
    made = jobs.prepare(SYNTHETIC, ["trainer.num_workers=3"], runtime, environ=shell)
    assert made.entrypoint == "dist-contrast train experiment.yaml"
    assert made.cfg.trainer.num_workers == 3
    assert made.cfg.experiment.run_name and made.cfg.experiment.run_name.startswith(
        "synthetic-infonce-")
    assert made.metadata == {jobs.METADATA_RUN: made.cfg.experiment.run_name,
                             jobs.METADATA_EXPERIMENT: "dist-contrast"}
    # The runtime environment's own settings win; the shell fills in the rest.
    assert made.runtime_env["env_vars"] == {
        "MLFLOW_TRACKING_URI": "http://in-cluster:5000", "MLFLOW_TRACKING_USERNAME": "ana",
        "MLFLOW_TRACKING_PASSWORD": "pw", "RAY_JOB_STOP_WAIT_TIME_S": jobs.STOP_WAIT_S,
    }
    assert made.runtime_env["pip"] == ["x"] and runtime["env_vars"] == {
        "MLFLOW_TRACKING_URI": "http://in-cluster:5000"}  # the caller's dict is left alone
    assert made.notes == ["passing MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD from this "
                          "shell to the job"]
    # The config sent is the one validated here, and it loads again on the cluster.
    assert yaml.safe_load(jobs.to_yaml(made.cfg))["trainer"]["num_workers"] == 3


def test_a_submission_without_a_tracking_server_says_where_runs_go() -> None:
    made = jobs.prepare(SYNTHETIC, ["experiment.run_name=r1"], {}, environ={})
    assert made.cfg.experiment.run_name == "r1"
    (note,) = made.notes
    assert note.startswith("no MLFLOW_TRACKING_URI goes with the job")
    local = jobs.prepare(SYNTHETIC, ["tracking.tracking_uri=sqlite:///x.db"], {}, environ={})
    assert local.notes[0].startswith("the job logs to sqlite:///x.db on the head node")
    with pytest.raises(UserError, match="loss.temperature"):
        jobs.prepare(SYNTHETIC, ["loss.temperature=0"], {}, environ={})


MOUNTS = """\
overlay / overlay rw 0 0
/dev/sda1 /data ext4 rw 0 0
nfs.example:/export /mnt/shared nfs4 rw 0 0
s3fs /mnt/bucket fuse.s3fs rw 0 0
/dev/sdb1 /mnt/shared/local\\040disk xfs rw 0 0
"""


def test_the_filesystem_of_a_path_is_its_longest_mount() -> None:
    assert filesystem_type("/data/results", MOUNTS) == "ext4"
    assert filesystem_type("/mnt/shared/results", MOUNTS) == "nfs4"
    assert filesystem_type("/mnt/shared/local disk/x", MOUNTS) == "xfs"
    assert filesystem_type("/mnt/sharedother", MOUNTS) == "overlay"
    assert filesystem_type("/tmp/x", "") == "unknown"


def test_a_node_local_output_dir_on_a_multi_node_cluster_is_one_warning() -> None:
    assert check_storage("/data/results", nodes=1, mounts=MOUNTS) == []
    assert check_storage("s3://bucket/results", nodes=4, mounts=MOUNTS) == []
    assert check_storage("/mnt/shared/results", nodes=4, mounts=MOUNTS) == []
    assert check_storage("/mnt/bucket/results", nodes=4, mounts=MOUNTS) == []
    (warning,) = check_storage("/data/results", nodes=3, mounts=MOUNTS)
    assert warning.startswith("the Ray cluster has 3 nodes and experiment.output_dir="
                              "/data/results is on this node's own disk (ext4)")
    assert "s3://" in warning and "\n" not in warning


def test_an_mlflow_server_that_refuses_us_is_one_line_naming_the_fix() -> None:
    uri = "http://mlflow:5000"
    unauthenticated = MlflowException("API request to endpoint /x failed with error code 401 != "
                                      "200. Response body: 'You are not authenticated.'")
    error = refusal(uri, unauthenticated, {"MLFLOW_TRACKING_USERNAME": "ana"})
    assert error is not None and str(error) == (
        "the MLflow server 'http://mlflow:5000' rejected the credentials of "
        "MLFLOW_TRACKING_USERNAME=ana (401); set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD to an account of that server")
    anonymous = refusal(uri, unauthenticated, {})
    assert anonymous is not None and "requires a login (401)" in str(anonymous)
    host = refusal(uri, MlflowException("error code 403 != 200. Response body: 'Invalid Host "
                                        "header - possible DNS rebinding attack detected'"), {})
    assert host is not None and "refused the Host header mlflow:5000" in str(host)
    assert "--allowed-hosts" in str(host)
    denied = refusal(uri, MlflowException("error code 403: PERMISSION_DENIED"),
                     {"MLFLOW_TRACKING_USERNAME": "ana"})
    assert denied is not None and "denied ana access (403)" in str(denied)
    assert refusal(uri, ConnectionError("connection refused"), {}) is None


def _readme_section() -> str:
    """docs/cluster.md, the page "from laptop to cluster" that the README links to."""
    return (ROOT / "docs" / "cluster.md").read_text()


def _commands(section: str) -> list[str]:
    """The shell lines of the section's code blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [line.split("#")[0].strip() for line in joined.splitlines() if line.strip()]


def test_the_readme_commands_are_the_ones_the_tests_and_manifests_run() -> None:
    from dist_contrast.cli import _parser

    commands = _commands(_readme_section())
    services = (ROOT / "tests" / "services.py").read_text()
    seen = set()
    for command in commands:
        words = shlex.split(command)
        program = next((w for w in words if w in ("dist-contrast", "mlflow", "ray", "kubectl")),
                       None)
        if program is None:
            continue
        seen.add(program)
        args = words[words.index(program) + 1:]
        if program == "dist-contrast":  # parses with the real command line
            _parser().parse_args(args)
            assert args[0] in {"train", "submit", "jobs", "compare"}
        elif program in ("mlflow", "ray"):  # the flags the cluster tests start them with
            for flag in (a.split("=")[0] for a in args if a.startswith("--")):
                assert f'"{flag}' in services, f"{program} {flag} is not what the tests run"
        else:  # kubectl: the kustomization and the Service it port-forwards exist
            if "-k" in args:
                assert (ROOT / args[args.index("-k") + 1] / "kustomization.yaml").is_file()
            if "port-forward" in args:
                service = args[args.index("port-forward") + 1].removeprefix("svc/")
                assert f"name: {service}\n" in (ROOT / "k8s" / "mlflow.yaml").read_text()
    assert seen == {"dist-contrast", "mlflow", "ray", "kubectl"}
