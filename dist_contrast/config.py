"""One experiment = one YAML file, validated into a frozen, typed config.

``load_config(path, overrides)`` reads the YAML, applies ``key=value`` overrides
(``loss.temperature=0.2``, ``trainer.num_workers=4``), and validates the result. Every
mistake (unknown key, wrong type, out-of-range value, impossible combination) raises a
:class:`~dist_contrast.errors.UserError` whose message is one line naming the key and what
would be right. The resolved :class:`Config` is what the Ray workers receive and what MLflow
logs (flattened params plus the YAML as an artifact).

Each lane owns the section it reads: ``data`` (``dist_contrast.data``), ``model``
(``dist_contrast.models``), ``negatives`` (``dist_contrast.negatives``). The sections the
trainer reads live here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dist_contrast.data.config import DataConfig
from dist_contrast.errors import UserError
from dist_contrast.models.config import ModelConfig
from dist_contrast.negatives.config import NegativesConfig
from dist_contrast.negatives.registry import LossNeeds
from dist_contrast.objectives import get_objective, loss_names, loss_options
from dist_contrast.paths import ConfigPath, OptionalConfigPath
from dist_contrast.section import Section


class ExperimentConfig(Section):
    name: str = Field(default="dist-contrast", min_length=1)
    seed: int = Field(default=0, ge=0)
    output_dir: ConfigPath = "results"
    run_name: str | None = None

    @field_validator("name", "run_name")
    @classmethod
    def _one_folder(cls, value: str | None, info: ValidationInfo) -> str | None:
        # The run's folder is output_dir/run_name (by default output_dir/name-TIMESTAMP): a
        # separator or '..' would put checkpoints somewhere else, outside output_dir.
        if value is not None:
            check_folder_name(value, f"experiment.{info.field_name}")
        return value


def check_folder_name(value: str, key: str) -> None:
    """Refuse a name that is not exactly one folder name: empty, ``.``, ``..``, or holding a
    path separator or a NUL."""
    if value in ("", ".", "..") or any(c in value for c in "/\\\0"):
        raise ValueError(
            f"{key}={value!r} must be a single folder name (no '/' or '\\', not '.' or "
            f"'..', not empty): {FOLDER_NAMES.get(key, 'it names a folder')}"
        )


#: What each name that :func:`check_folder_name` checks is a folder of.
FOLDER_NAMES = {
    "experiment.run_name": "it names the run's folder under experiment.output_dir",
    "experiment.name": "it starts the default experiment.run_name, the run's folder under "
                       "experiment.output_dir",
}


class LossConfig(Section):
    """Which objective, and the temperature τ: fixed, cosine-scheduled or learnable."""

    name: str = "info_nce"
    temperature: float = Field(default=0.1, gt=0.0)
    temperature_mode: Literal["fixed", "cosine", "learnable"] = "fixed"
    temperature_final: float | None = Field(default=None, gt=0.0)
    temperature_min: float = Field(default=0.01, gt=0.0)
    temperature_max: float = Field(default=1.0, gt=0.0)
    tile_size: int | None = Field(default=None, gt=0)
    # CLIP's loss: query -> document plus document -> query over the global batch, halved.
    symmetric: bool = False
    # Where each query's positive comes from: ``key`` (the other view's key, from the query
    # encoder or the momentum encoder) or ``memory`` (the instance's own memory-bank entry, a
    # constant target, as in InstDisc). None: the loss's own (NCE: memory; the others: key).
    positive: Literal["key", "memory"] | None = None
    params: dict[str, float | int | bool | str] = Field(default_factory=dict)

    @property
    def positive_source(self) -> str:
        """``loss.positive``, or the loss's default."""
        return self.positive or get_objective(self.name).positives[0]

    @model_validator(mode="after")
    def _check(self) -> LossConfig:
        if self.name not in loss_names():
            raise ValueError(
                f"loss.name '{self.name}' is unknown; choose one of {', '.join(loss_names())}"
            )
        options = loss_options(self.name)
        if {"tile_size", "in_batch"} & set(self.params):
            raise ValueError(
                "set loss.tile_size and negatives.sources (batch = in-batch negatives) "
                "instead of loss.params.tile_size / in_batch"
            )
        unknown = sorted(set(self.params) - options)
        if unknown:
            allowed = ", ".join(sorted(options - {"tile_size", "in_batch"})) or "none"
            raise ValueError(
                f"loss.params.{unknown[0]} is not an option of loss.name={self.name} "
                f"(its options: {allowed})"
            )
        if self.symmetric and not get_objective(self.name).in_batch:
            raise ValueError(f"loss.symmetric needs a loss over the batch's keys (info_nce, "
                             f"simple, hard_info_nce, hard_simple), not loss.name={self.name}")
        takes = get_objective(self.name).positives
        if self.positive is not None and self.positive not in takes:
            raise ValueError(f"loss.positive={self.positive} is not possible for "
                             f"loss.name={self.name} (its positive: {' or '.join(takes)})")
        if self.symmetric and self.positive_source == "memory":
            raise ValueError("loss.symmetric compares documents with the batch's queries, and "
                             "a bank entry is no document of the batch; drop loss.positive=memory "
                             "or loss.symmetric")
        if self.tile_size is not None and "tile_size" not in options:
            raise ValueError(f"loss.tile_size does not apply to loss.name={self.name}")
        if self.temperature_mode == "cosine" and self.temperature_final is None:
            raise ValueError(
                "loss.temperature_mode=cosine needs loss.temperature_final (τ at the end)"
            )
        if self.temperature_mode == "learnable" and not (
            self.temperature_min <= self.temperature <= self.temperature_max
        ):
            raise ValueError(
                "loss.temperature must lie in [loss.temperature_min, loss.temperature_max] "
                "when learnable"
            )
        return self


class OptimizerConfig(Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(default=50, ge=0)
    min_lr_ratio: float = Field(default=0.01, ge=0.0, le=1.0)


class DeepSpeedConfig(Section):
    zero_stage: Literal[0, 1, 2] = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_clipping: float = Field(default=1.0, ge=0.0)


class GradCacheConfig(Section):
    # Rows encoded with a graph at once, per worker and side (GradCache: train/grad_cache.py).
    chunk_size: int = Field(ge=1)


class TrainerConfig(Section):
    num_workers: int = Field(default=2, ge=1)
    batch_size: int = Field(default=256, ge=2, description="per worker")
    max_steps: int = Field(default=600, ge=1)
    log_every: int = Field(default=10, ge=1)
    use_gpu: Literal["auto", "true", "false"] = "auto"
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    threads_per_worker: int = Field(default=1, ge=1)
    # Restarts of the worker group after a worker dies, each from the newest complete checkpoint.
    max_failures: int = Field(default=0, ge=0)
    resume_from: OptionalConfigPath = None
    show_worker_logs: bool = False
    # Seconds the driver waits for news from the workers while they start (each start-up
    # stage: the worker group, the data/model/engine build, the first step) before it stops
    # the run with one line naming the stage and the workers' logs; 0 waits forever.
    start_timeout_s: float = Field(default=900.0, ge=0.0)
    # Consecutive steps with a non-finite loss or gradient (each skipped) before the run stops.
    max_bad_steps: int = Field(default=5, ge=1)
    # Seed everything and use deterministic algorithms only (slower; see the README).
    deterministic: bool = False
    # GradCache: the batch's exact gradient with activations held for one chunk at a time.
    grad_cache: GradCacheConfig | None = None

    def trains_on_gpu(self, gpus: float) -> bool:
        """The GPU-use rule: ``use_gpu``, or with ``auto`` a GPU for every worker among the
        ``gpus`` the machine or cluster has."""
        if self.use_gpu != "auto":
            return self.use_gpu == "true"
        return gpus >= self.num_workers

    @field_validator("use_gpu", mode="before")
    @classmethod
    def _yaml_boolean(cls, value: object) -> object:
        # YAML reads an unquoted true/false (and yes/no, on/off) as a boolean, not a string.
        if isinstance(value, bool):
            return "true" if value else "false"
        return value


class EvalConfig(Section):
    every_steps: int = Field(default=200, ge=1)
    # Also evaluate the untrained encoder, at step 0: where a trajectory starts.
    at_start: bool = False
    knn_k: int = Field(default=200, ge=1)
    knn_temperature: float = Field(default=0.07, gt=0.0)
    max_samples: int = Field(default=5000, ge=10)
    linear_probe: bool = True
    penalty_top_k: int = Field(default=10, ge=1)


class CheckpointConfig(Section):
    every_steps: int = Field(default=200, ge=1)
    num_to_keep: int | None = Field(default=2, ge=1)


class TrackingConfig(Section):
    experiment: str = Field(default="dist-contrast", min_length=1)
    tracking_uri: str | None = None
    # At the end of a run, log the trained encoder as an MLflow model (with its preprocessing).
    log_model: bool = True
    # Also register it in the Model Registry under this name (a new version each run).
    register_model: str | None = Field(default=None, min_length=1)
    # What the logged model puts out: the projection head's unit-norm embedding, or the
    # backbone's representation before the head (what SimCLR/MoCo users take downstream).
    model_output: Literal["embedding", "representation"] = "embedding"
    # CPU, memory (and GPU) use of the run, logged by MLflow as system/* metrics.
    system_metrics: bool = False


class Config(Section):
    experiment: ExperimentConfig = ExperimentConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    # A factory: the sections of sources registered after this module was imported included.
    negatives: NegativesConfig = Field(default_factory=NegativesConfig)
    optimizer: OptimizerConfig = OptimizerConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    trainer: TrainerConfig = TrainerConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    tracking: TrackingConfig = TrackingConfig()

    @property
    def cpus_needed(self) -> float:
        """The CPUs a run holds in Ray: its training workers', and the Ray tasks of its
        negative sources (``negatives.corpus.workers``)."""
        trainer = self.trainer
        return trainer.num_workers * trainer.cpus_per_worker + self.negatives.task_cpus()

    def loss_needs(self) -> LossNeeds:
        """What the objective reads from the negative sources (their checks and memory)."""
        objective = get_objective(self.loss.name)
        return LossNeeds(self.loss.name, needs_noise=objective.needs_noise,
                         sharded_pool=objective.sharded_pool,
                         positive_from_memory=self.loss.positive_source == "memory")

    def _check_loss_sources(self) -> None:
        """The objective's declared needs against the configured negative sources (each
        source's own checks: negatives/registry.py)."""
        self.negatives.check_objective(self.loss_needs())

    @model_validator(mode="after")
    def _check_combinations(self) -> Config:
        self._check_loss_sources()
        if self.model.name == "cnn" and not self.data.yields_images:
            raise ValueError(
                f"model.name=cnn needs image data but data.name={self.data.name} yields vectors; "
                "use model.name=mlp or data.name=digits"
            )
        if self.model.is_text != self.data.yields_text:
            if self.model.is_text:
                raise ValueError(
                    f"model.name={self.model.name} encodes text but data.name={self.data.name} "
                    "yields vectors; use data.name=pairs with a file of (query, document) pairs"
                )
            raise ValueError(
                f"data.name={self.data.name} yields text pairs; use a text encoder: "
                "model.name=bow or model.name=transformer"
            )
        if (self.loss.positive == "memory" and self.negatives.in_batch
                and get_objective(self.loss.name).in_batch):
            raise ValueError(
                "loss.positive=memory takes each query's positive from the bank, so the batch "
                "holds no keys to be in-batch negatives; drop 'batch' from negatives.sources "
                "(the bank gives the negatives)"
            )
        if self.trainer.grad_cache is not None and self.model.batch_norm:
            raise ValueError(
                "trainer.grad_cache encodes the batch in chunks, and BatchNorm makes a row's "
                "embedding depend on the rest of its chunk, so the gradient would not be the "
                "batch's; set model.batch_norm=false (or drop trainer.grad_cache)"
            )
        self.negatives.check_config(self)
        if self.loss.symmetric and not self.negatives.in_batch:
            raise ValueError("loss.symmetric compares documents with the batch's queries: "
                             "keep the batch among negatives.sources")
        # optimizer.warmup_steps >= trainer.max_steps is allowed: the warm-up is capped
        # (train.deepspeed_config.warmup_steps) and the driver says so (preflight.config_notes).
        return self


# ----------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'loss.temperature=0.2'`` -> ``(['loss', 'temperature'], 0.2)`` (value read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(
            f"override '{text}' is not of the form section.key=value (e.g. loss.temperature=0.2)"
        )
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key=value`` override set (nested dicts created)."""
    result: dict[str, Any] = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"override '{text}': '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return result


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of sections in the YAML file ``path``: one line for a path that is missing,
    a folder, unreadable, not YAML, empty, or not a mapping."""
    file = Path(path)
    if file.is_dir():
        raise UserError(f"config file '{file}' is a directory; name a YAML file"
                        f"{_example_in(file)}")
    if not file.is_file():
        raise UserError(
            f"config file '{file}' not found; pass a YAML file such as configs/synthetic.yaml"
        )
    try:
        raw = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise UserError(f"config file '{file}' cannot be read ({exc.strerror or exc}); "
                        "check its permissions") from None
    except UnicodeDecodeError:
        raise UserError(f"config file '{file}' is not text; pass a YAML file such as "
                        "configs/synthetic.yaml") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file '{file}' is not valid YAML{where}; fix the syntax") from None
    if raw is None:  # empty, or comments only: not "all defaults" by accident
        raise UserError(
            f"config file '{file}' is empty; give it at least experiment: and trainer: "
            "settings, or start from a copy of configs/synthetic.yaml"
        )
    if not isinstance(raw, dict):
        raise UserError(
            f"config file '{file}' must be a mapping of sections (experiment:, data:, ...)"
        )
    return raw


def _example_in(folder: Path) -> str:
    """`` in it, e.g. <folder>/<first.yaml>`` when the folder holds one, else a general hint."""
    with contextlib.suppress(OSError):
        found = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))
        if found:
            return f" in it, e.g. {found[0]}"
    return ", e.g. configs/synthetic.yaml"


def validate(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{source}: {describe_validation_error(exc)}") from None


def strip_sweep_block(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` without its top-level ``sweep:`` block: a file's grid, read only by
    ``dist-contrast sweep`` (so a study's config trains as it is)."""
    return {k: v for k, v in raw.items() if k != "sweep"}


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override and validate one experiment's YAML file (its ``sweep:`` block aside)."""
    raw = apply_overrides(strip_sweep_block(read_yaml(path)), overrides or [])
    return validate(raw, source=str(path))


#: The names pydantic puts in an error's location for the branch of a union it tried.
UNION_MEMBERS = {"float", "int", "bool", "str"}


def describe_validation_error(exc: ValidationError) -> str:
    """The first error of a pydantic ValidationError as one line: key, problem, input."""
    err = exc.errors()[0]
    kind = err["type"]
    loc = list(err["loc"])
    while loc and loc[-1] in UNION_MEMBERS:  # loss.params.x.float: the branch of x's union
        loc.pop()
    key = ".".join(str(part) for part in loc)
    if kind == "finite_number":
        return f"{key} must be a finite number, not {err.get('input')!r}"
    msg = err["msg"]
    if kind == "extra_forbidden":
        section = ".".join(str(p) for p in err["loc"][:-1])
        allowed = _allowed_keys(err["loc"][:-1])
        where = f"in section '{section}'" if section else "at the top level"
        return f"unknown key '{key}' {where}; allowed keys: {', '.join(allowed)}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {msg}{shown}"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Config
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def flatten(config: Config) -> dict[str, str]:
    """Dotted-key params for MLflow: ``{'loss.temperature': '0.1', ...}``."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = str(node)

    walk("", config.model_dump(mode="json"))
    return out


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
