"""Orchestration: Ray lives here (and only ``ray.train``'s per-worker calls in the trainer).

With no cluster, ``run_training`` starts a local Ray runtime in-process; with ``RAY_ADDRESS``
set it joins that cluster. Either way it runs ``ray.train.torch.TorchTrainer`` with
``trainer.num_workers`` workers, each of which builds a DeepSpeed engine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dist_contrast.config import Config, flatten, to_yaml
from dist_contrast.errors import RunFailed, UserError
from dist_contrast.progress import ChannelReader, ProgressDisplay, RunChannel
from dist_contrast.timing import mark
from dist_contrast.tracking import (
    TrainingData,
    default_tracking_uri,
    end_run,
    ensure_experiment,
    final_metrics,
    open_run,
)
from dist_contrast.train import storage


@dataclass(frozen=True)
class TrainingSummary:
    run_name: str
    run_id: str | None
    tracking_uri: str
    checkpoint_path: str | None
    metrics: dict[str, float]


def resolve(cfg: Config) -> Config:
    """Fill what depends on where we run: run name, absolute output dir, tracking URI."""
    run_name = cfg.experiment.run_name or f"{cfg.experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    output_dir = _local_or_uri(cfg.experiment.output_dir)
    tracking_uri = cfg.tracking.tracking_uri or default_tracking_uri()
    return cfg.model_copy(
        update={
            "experiment": cfg.experiment.model_copy(
                update={"run_name": run_name, "output_dir": output_dir}
            ),
            "tracking": cfg.tracking.model_copy(update={"tracking_uri": tracking_uri}),
        }
    )


@dataclass(frozen=True)
class Checked:
    """What the driver learnt before starting anything: notes to print, and the data's size
    and shape for the cluster's resource check (and, with its classes and dtype, for the
    MLflow run's dataset)."""

    notes: list[str]
    train_size: int
    input_shape: tuple[int, ...]
    num_classes: int | None = None
    feature_dtype: str = "float32"


def preflight(cfg: Config) -> Checked:
    """Catch user mistakes on the driver, in seconds, before anything is written or started:
    the data, this machine's CPUs and memory (when running locally), and the checkpoint a run
    would resume from. Raises ``UserError`` (one line); returns notes to print."""
    from dist_contrast import preflight as checks
    from dist_contrast.data import DataError, build_data

    try:
        bundle = build_data(cfg.data, seed=cfg.experiment.seed)
    except DataError as exc:
        raise UserError(str(exc)) from None
    size, shape = len(bundle.train), tuple(bundle.input_shape)
    notes = checks.config_notes(cfg)
    if _cluster_address() is None:
        cpus, gpus, memory = checks.local_resources()
        notes += checks.check_resources(cfg, cpus=cpus, gpus=gpus, memory_bytes=memory,
                                        local=True, train_size=size, input_shape=shape)
    run_dir = storage.run_directory(cfg)
    newest = storage.newest_complete(run_dir)
    source = newest.path if newest is not None else cfg.trainer.resume_from
    if source is not None:
        notes += checks.check_checkpoint(source, cfg, shape, train_size=size)
    notes += _resume_notes(cfg, run_dir)
    dtype = str(bundle.eval_train[0].dtype).removeprefix("torch.")
    return Checked(notes, size, shape, bundle.num_classes, dtype)


def _enable_token_auth_if_available() -> None:
    """Ray 2.5x clusters authenticate with a token; a client sends it only in token mode."""
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


def _cluster_address() -> str | None:
    """``RAY_ADDRESS`` when it names a cluster to join (unset, empty or ``local``: None)."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    return address if address and address != "local" else None


def _check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's minutes of retries, when nothing listens at the address."""
    import socket
    from urllib.parse import urlsplit

    if address == "auto":
        return
    if address.startswith(("http://", "https://")):
        raise UserError(
            f"RAY_ADDRESS={address} is a job-server URL; use it with `ray job submit` "
            "(launch/submit.sh), or set RAY_ADDRESS to the head's GCS address host:6379"
        )
    parsed = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        with socket.create_connection((parsed.hostname or "", parsed.port or 6379), timeout=5):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({exc.strerror or exc}); "
            "start it or unset RAY_ADDRESS to run locally"
        ) from None


def _use_gpu(cfg: Config, ray: Any) -> bool:
    if cfg.trainer.use_gpu != "auto":
        return cfg.trainer.use_gpu == "true"
    return float(ray.cluster_resources().get("GPU", 0)) >= cfg.trainer.num_workers


def _start_ray(cfg: Config, checked: Checked) -> Any:
    """Connect to ``RAY_ADDRESS`` and check its resources, or start a local runtime."""
    import logging

    address = _cluster_address()
    if address is not None:
        _enable_token_auth_if_available()  # read by Ray when it is imported

    import ray

    needed = cfg.trainer.num_workers * cfg.trainer.cpus_per_worker
    if address is not None:
        try:
            ray.init(logging_level=logging.WARNING, log_to_driver=cfg.trainer.show_worker_logs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(
                f"cannot reach the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']} "
                f"({str(exc).splitlines()[0][:160]}); start it, give its token (RAY_AUTH_TOKEN or "
                "~/.ray/auth_token), or unset RAY_ADDRESS to run locally"
            ) from None
        from dist_contrast.preflight import check_resources

        resources = ray.cluster_resources()
        for note in check_resources(
            cfg, cpus=float(resources.get("CPU", 0)), gpus=float(resources.get("GPU", 0)),
            memory_bytes=int(resources.get("memory", 0)), local=False,
            train_size=checked.train_size, input_shape=checked.input_shape,
        ):
            print(f"dist-contrast: note: {note}", flush=True)
        _warn_about_storage(cfg, ray)
    else:
        # Local: make room for every worker even on a 2-core laptop (they time-share).
        num_cpus = max(os.cpu_count() or 1, int(needed + 0.999))
        with _own_address_lookup() as sessions:
            ray.init(
                # A runtime of our own, even when a `ray start` cluster runs on this machine
                # (without it Ray joins that one, which refuses num_cpus).
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=cfg.trainer.show_worker_logs,
                configure_logging=True,
                _temp_dir=sessions,
            )
    return ray


#: The private directory of :func:`_own_address_lookup`, removed by :func:`shutdown_ray`.
_LOOKUP_DIR: str | None = None


@contextlib.contextmanager
def _own_address_lookup() -> Iterator[str]:
    """Make every process of the local runtime find that runtime when it looks one up.

    Ray processes that look for "the" cluster (Ray Train's placement-group cleaner does, every
    second) read ``$RAY_TMPDIR/ray/ray_current_cluster``, which a ``ray start`` on this machine
    writes and leaves behind when it is not stopped with ``ray stop``. A stale one hangs each
    lookup for 40 s and every run's end for 12 s; a live one points at another cluster. So the
    local runtime starts with ``RAY_TMPDIR`` set to a private directory, which its processes
    inherit, and the address file there names its own GCS. Its session directories and logs
    stay where Ray puts them by default (yielded, for ``ray.init(_temp_dir=...)``).
    """
    global _LOOKUP_DIR
    import ray

    # Where Ray keeps its sessions by default (RAY_TMPDIR, TMPDIR on Linux, else /tmp).
    linux_tmp = os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None
    sessions = str(Path(os.environ.get("RAY_TMPDIR") or linux_tmp or "/tmp") / "ray")
    private = tempfile.mkdtemp(prefix="dist-contrast-ray-")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = private  # inherited by the processes ray.init spawns
    try:
        yield sessions
    finally:
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
    if not ray.is_initialized():
        shutil.rmtree(private, ignore_errors=True)
        return
    _LOOKUP_DIR = private
    address_file = Path(private) / "ray" / "ray_current_cluster"
    address_file.parent.mkdir()
    address_file.write_text(ray.get_runtime_context().gcs_address)


def _warn_about_storage(cfg: Config, ray: Any) -> None:
    """On a cluster of several nodes, an output_dir on this node's own disk: one line."""
    from dist_contrast.preflight import check_storage

    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    for warning in check_storage(cfg.experiment.output_dir, nodes):
        print(f"dist-contrast: warning: {warning}", flush=True)


def _worker_env(use_gpu: bool, cfg: Config) -> dict[str, str]:
    env = {
        "OMP_NUM_THREADS": str(cfg.trainer.threads_per_worker),
        "PYTHONWARNINGS": "ignore",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed on CPU: gloo backend, no CUDA probing
    return env


class Interrupted(UserError):
    """The user stopped the run (SIGINT / SIGTERM): what was saved and how to go on."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def run_training(
    cfg: Config, train_loop: Callable[[dict[str, Any]], None] | None = None
) -> TrainingSummary:
    """Run one experiment end to end and return its summary (raises UserError on user mistakes).

    The driver checks what it can before anything starts, opens the MLflow run, runs the
    workers, and marks the run FAILED or KILLED when it does not finish. SIGINT and SIGTERM
    stop the workers after the current step with a checkpoint (a second signal stops at once)
    and raise :class:`Interrupted`.

    ``train_loop`` replaces the per-worker function (default
    :func:`dist_contrast.train.entry.train_loop_per_worker`); a wrapper that registers an
    objective or negative source on the worker and then calls the default is how code outside
    the package plugs in.
    """
    mark("driver_start")
    cfg = resolve(cfg)
    address = _cluster_address()
    if address is not None:  # before anything is written
        _check_reachable(address)
    checked = preflight(cfg)
    mark("preflight")
    for note in checked.notes:
        print(f"dist-contrast: note: {note}", flush=True)
    uri = str(cfg.tracking.tracking_uri)
    local_store = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    artifacts = Path.cwd() / "mlartifacts" if local_store else None
    run_dir = storage.run_directory(cfg)
    run_id = None
    with Signals() as signals:
        try:
            # The MLflow experiment is checked (or created) while Ray starts: its failure is
            # raised once Ray is up, and the except below shuts Ray down again.
            with ThreadPoolExecutor(1, thread_name_prefix="mlflow-check") as background:
                experiment = background.submit(ensure_experiment, uri, cfg.tracking.experiment,
                                               artifacts)
                ray = _start_ray(cfg, checked)
                mark("ray_init")
                experiment.result()
            mark("mlflow_experiment")
            signals.claim()
            run_id, _ = open_run(
                uri, cfg.tracking.experiment, str(cfg.experiment.run_name),
                continue_existing=storage.exists(run_dir), params=flatten(cfg),
                config_yaml=to_yaml(cfg), tags=_run_tags(cfg),
                data=_training_data(cfg, checked),
            )
            mark("mlflow_run")
            _run_workers(ray, cfg, run_id, signals, train_loop)
            mark("workers_done")
        except BaseException as exc:
            interrupted = signals.received is not None or isinstance(exc, KeyboardInterrupt)
            failure: BaseException | None = None
            try:  # explained first: the run's description ends with the failure's one line
                failure = None if interrupted else _explain_failure(exc, cfg)
            finally:
                if run_id is not None:
                    end_run(uri, run_id, "KILLED" if interrupted else "FAILED",
                            reason=None if failure is None else str(failure))
                shutdown_ray()
            if failure is None:
                raise _interrupted(cfg, signals.received or signal.SIGINT, None) from None
            raise failure from None
    shutdown_ray()
    mark("ray_shutdown")
    # From the MLflow run: Ray keeps the metrics of registered checkpoints only, and the
    # checkpoints are ours.
    metrics = final_metrics(uri, run_id)
    if signals.received is not None:
        end_run(uri, run_id, "KILLED")
        raise _interrupted(cfg, signals.received, metrics.get("step"))
    end_run(uri, run_id, "FINISHED")  # rank 0 has marked it; in case it could not
    return TrainingSummary(
        run_name=str(cfg.experiment.run_name),
        run_id=run_id,
        tracking_uri=uri,
        checkpoint_path=_newest_checkpoint(cfg),
        metrics=metrics,
    )


def _resume_notes(cfg: Config, run_dir: str) -> list[str]:
    """What a continued or resumed run changes that the user may not expect."""
    newest = storage.newest_complete(run_dir)
    resume = cfg.trainer.resume_from
    source = newest.path if newest is not None else (_local_or_uri(resume) if resume else None)
    meta = storage.read_meta(source) if source is not None else None
    if not meta or meta.get("max_steps") in (None, cfg.trainer.max_steps):
        return []
    if cfg.optimizer.schedule != "cosine":  # a constant schedule does not depend on the length
        return []
    return [
        f"trainer.max_steps changed from {meta['max_steps']} to {cfg.trainer.max_steps} since "
        f"the checkpoint at step {meta['step']}: the learning rate goes on from its value there "
        "along a cosine to the new end (no jump)"
    ]


def _newest_checkpoint(cfg: Config) -> str | None:
    run_dir = storage.run_directory(cfg)
    newest = storage.newest_complete(run_dir)
    return newest.path if newest is not None else None


def _training_data(cfg: Config, checked: Checked) -> TrainingData:
    """The training data as the MLflow run records it: the file (digest of its bytes), or the
    generator with its seed, size and settings (digest of those)."""
    data = cfg.data
    shape, dtype, rows = checked.input_shape, checked.feature_dtype, checked.train_size
    if data.name == "file":
        assert data.path is not None  # the config requires it for data.name=file
        return TrainingData.from_file(
            data.path, rows=rows, feature_shape=shape, dtype=dtype,
            labels_path=data.labels_path, label_column=data.label_column,
        )
    # The held-out split decides which rows are training rows.
    split = ({"num_test": data.num_test} if data.num_test is not None
             else {"test_fraction": data.test_fraction})
    seed = data.seed if data.seed is not None else cfg.experiment.seed
    if data.name == "digits":
        generator = {"generator": "sklearn.datasets.load_digits (1,797 8×8 images)",
                     "seed": seed, **split}
    else:
        settings = ("num_samples", "num_classes", "dim", "signal_dim", "within_class_scale",
                    "nuisance_scale", "noise_scale")
        generator = {"generator": "dist_contrast.data.synthetic (latent classes + nuisance)",
                     "seed": seed, **{k: getattr(data, k) for k in settings}, **split}
    label = "label" if checked.num_classes is not None else None
    return TrainingData.generated(data.name, generator, rows=rows, feature_shape=shape,
                                  dtype=dtype, label=label)


def _run_tags(cfg: Config) -> dict[str, str]:
    tags = {"dist_contrast.world_size": str(cfg.trainer.num_workers)}
    resume = cfg.trainer.resume_from
    if resume is not None:
        # A resumed run is a new MLflow run that says where it came from.
        tags["dist_contrast.resumed_from_checkpoint"] = _local_or_uri(resume)
        meta = storage.read_meta(_local_or_uri(resume))
        if meta and meta.get("mlflow_run_id"):
            tags["dist_contrast.resumed_from_run"] = str(meta["mlflow_run_id"])
    return tags


def _run_workers(
    ray: Any, cfg: Config, run_id: str, signals: Signals,
    train_loop: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Run the TorchTrainer on the Ray runtime ``ray`` is connected to."""
    channel = ray.remote(num_cpus=0)(RunChannel).remote()
    trainer = _trainer(cfg, _use_gpu(cfg, ray), channel, train_loop,
                       extra={"run_id": run_id, "stop_signal": channel})
    display = ProgressDisplay(ChannelReader(ray, channel), total=cfg.trainer.max_steps)
    display.start()
    try:
        signals.run(trainer.fit, on_first=lambda: channel.request.remote())
    finally:
        display.stop()
        ray.kill(channel)


class Signals:
    """SIGINT / SIGTERM during a run: the first asks the workers to stop after the current
    step (they save a checkpoint), the second stops at once. Ray Train's own SIGINT handler
    aborts the workers without a checkpoint, so ``fit`` runs in a thread, where Ray does not
    install it, and the main thread keeps the signals."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._on_first: Callable[[], Any] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may handle signals; the caller's own rules hold
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def claim(self) -> None:
        """Take the signals back: ``ray.init`` installs its own SIGTERM handler (it aborts
        the process), so this runs again once Ray is up."""
        if self._previous:
            for signum in self._previous:
                signal.signal(signum, self._handle)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        self.received = signum
        if not first or self._on_first is None:
            raise KeyboardInterrupt  # before the workers run, or a second signal: at once
        print(f"\ndist-contrast: {signal.Signals(signum).name} received: stopping after the "
              "current step and saving a checkpoint (again to stop at once)",
              file=sys.stderr, flush=True)
        self._on_first()

    def run(self, fit: Callable[[], Any], on_first: Callable[[], Any]) -> Any:
        """``fit()`` in a thread; signals are handled here meanwhile."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["result"] = fit()
            except BaseException as exc:  # handed to the main thread below
                outcome["error"] = exc

        thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
        self._on_first = on_first
        try:
            thread.start()
            while thread.is_alive():
                thread.join(0.2)
        finally:
            self._on_first = None
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]


def _interrupted(cfg: Config, signum: int, step: float | None) -> Interrupted:
    run_dir = storage.run_directory(cfg)
    kept = storage.newest_complete(run_dir)
    saved = f"checkpoint at step {kept.step} kept" if kept else "no checkpoint saved"
    at = f" at step {int(step)}" if step is not None else ""
    return Interrupted(
        f"stopped by {signal.Signals(signum).name}{at} ({saved}; MLflow run marked KILLED); "
        f"continue it with the same command and experiment.run_name={cfg.experiment.run_name}",
        signum,
    )


def shutdown_ray() -> None:
    """Stop the local Ray runtime (or leave the cluster): no Ray process outlives the run."""
    global _LOOKUP_DIR
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if _LOOKUP_DIR is not None:
        shutil.rmtree(_LOOKUP_DIR, ignore_errors=True)
        _LOOKUP_DIR = None


def _local_or_uri(path: str) -> str:
    """Local paths become absolute (workers run elsewhere); URIs (s3://, gs://) stay as given."""
    return path if "://" in path else str(Path(path).resolve())


def _trainer(
    cfg: Config, use_gpu: bool, queue: Any,
    train_loop: Callable[[dict[str, Any]], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    """The TorchTrainer for ``cfg``; every worker runs ``train_loop`` (by default
    ``train_loop_per_worker``) with the loop config below plus ``extra`` (the MLflow run id,
    the stop signal)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from dist_contrast.train.entry import train_loop_per_worker

    resume = cfg.trainer.resume_from
    loop_config = {
        "config": cfg.model_dump(mode="json"),
        "progress_queue": queue,
        # Ray Train V2 has no resume_from_checkpoint: the workers load this path themselves
        # when the run has no newer checkpoint of its own.
        "resume_from": _local_or_uri(resume) if resume else None,
        **(extra or {}),
    }
    return TorchTrainer(
        train_loop or train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.trainer.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.trainer.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=cfg.experiment.run_name,
            storage_path=cfg.experiment.output_dir,
            failure_config=FailureConfig(max_failures=cfg.trainer.max_failures),
            # Ray Train V2's RunConfig; mypy sees the V1 class of the same name.
            worker_runtime_env={"env_vars": _worker_env(use_gpu, cfg)},  # type: ignore[call-arg]
        ),
    )


def _explain_failure(exc: BaseException, cfg: Config) -> BaseException:
    """One line for the user. A worker's UserError is the driver's; a worker that failed is
    named, with what killed it when that is known, and the full report is saved beside the
    checkpoints."""
    user_error = _find(exc, lambda e: isinstance(e, UserError))
    if user_error is not None:  # raised in a worker: the same line and exit status here
        error = UserError(str(user_error))
        error.exit_code = getattr(user_error, "exit_code", UserError.exit_code)
        return error
    report = _save_report(cfg, exc)
    group = _find(exc, lambda e: hasattr(e, "worker_failures"))  # Ray's WorkerGroupError
    failures: dict[int, BaseException] = getattr(group, "worker_failures", {})
    if not failures:
        first = (str(exc).strip().splitlines() or [""])[0]
        return RunFailed(f"training failed: {type(exc).__name__}: {first[:200]} "
                         f"(full report: {report})")
    # The rank whose process died is the cause; the others then fail in a collective.
    dead = {rank: f for rank, f in failures.items() if _process_died(f)}
    rank, failure = min((dead or failures).items())
    if dead:
        what = "its process died (killed by a signal or the out-of-memory killer)"
        fix = (f"set trainer.max_failures (now {cfg.trainer.max_failures}) above 0 to restart "
               "from the newest checkpoint" if cfg.trainer.max_failures == 0 else
               f"it failed after {cfg.trainer.max_failures} restart(s) "
               "(trainer.max_failures); check the machine's memory and logs")
    else:
        # Ray wraps the worker's own exception; name that one.
        cause = getattr(failure, "cause", None)
        cause = cause if isinstance(cause, BaseException) else failure
        first = (str(cause).strip().splitlines() or [""])[0]
        what = f"{type(cause).__name__}: {first[:200]}"
        fix = "fix the cause and re-run with the same experiment.run_name to continue"
    return RunFailed(f"worker rank {rank} failed: {what}; {fix} (full report: {report})")


def _process_died(failure: BaseException) -> bool:
    """Whether Ray says the worker's process died (as opposed to raising an exception)."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    return isinstance(failure, ActorDiedError | ActorUnavailableError) or (
        "worker process has died" in str(failure)
    )


def _find(exc: BaseException, wanted: Callable[[BaseException], bool]) -> BaseException | None:
    """The first ``wanted`` exception in ``exc``'s chain of causes and worker failures."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if wanted(current):
            return current
        stack.extend([current.__cause__, current.__context__])
        stack.extend(getattr(current, "worker_failures", {}).values())
        for attr in ("cause", "error"):
            value = getattr(current, attr, None)
            stack.append(value if isinstance(value, BaseException) else None)
    return None


def _save_report(cfg: Config, exc: BaseException) -> str:
    """The whole failure (Ray's report with every worker's traceback) in a file; its path."""
    import traceback

    text = "".join(traceback.format_exception(exc))
    run_dir = storage.run_directory(cfg)
    if "://" in run_dir:
        path = Path(tempfile.gettempdir()) / f"dist-contrast-{cfg.experiment.run_name}-error.txt"
    else:
        path = Path(run_dir) / "error.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------- sweeps
# ``dist-contrast sweep`` (dist_contrast/sweep) runs many trainings on one Ray runtime: each
# trial is a Ray task that runs one TorchTrainer, so trials share the cluster like any jobs.


def connect(cfg: Config, checked: Checked) -> Any:
    """Join ``RAY_ADDRESS`` (checked reachable first) or start a local runtime; the ``ray``
    module, connected."""
    address = _cluster_address()
    if address is not None:
        _check_reachable(address)
    return _start_ray(cfg, checked)


def trial_slots(ray: Any, cfg: Config) -> int:
    """How many trainings of ``cfg``'s size the connected cluster runs at once (at least 1)."""
    needed = cfg.trainer.num_workers * cfg.trainer.cpus_per_worker
    return max(1, int(float(ray.cluster_resources().get("CPU", 0)) // needed))


def start_trial(ray: Any, cfg: Config, run_id: str) -> tuple[Any, Any]:
    """Start one training of ``cfg`` logging to ``run_id`` as a Ray task; returns the task's
    result reference and its stop signal (an actor: ``stop.request.remote()`` asks its
    workers to checkpoint and stop after the current step)."""
    stop = ray.remote(num_cpus=0)(RunChannel).remote()
    task = ray.remote(num_cpus=0, max_retries=0)(_run_trial).options(
        runtime_env={"env_vars": {"RAY_TRAIN_V2_ENABLED": "1"}},
        name=f"trial:{cfg.experiment.run_name}",
    )
    return task.remote(cfg.model_dump(mode="json"), run_id, stop), stop


def _run_trial(config: dict[str, Any], run_id: str, stop: Any) -> tuple[str, str | None]:
    """In a Ray task: one TorchTrainer run; ``("FINISHED", None)`` or ``("FAILED", line)``."""
    import ray

    cfg = Config.model_validate(config)
    try:
        _trainer(cfg, _use_gpu(cfg, ray), None,
                 extra={"run_id": run_id, "stop_signal": stop}).fit()
    except Exception as exc:
        return "FAILED", str(_explain_failure(exc, cfg))
    return "FINISHED", None
