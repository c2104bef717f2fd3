"""The data sources, each declared once: ``data.name`` picks one, and everything else (the
config check, the driver's pre-start checks, the MLflow dataset, ``embed`` and ``evaluate``)
reads its declaration, never its name.

A :class:`Dataset` declares

* its **rows and shape** (:attr:`Dataset.shape`: all rows and one row's encoder input shape,
  from the config or a file's header, without reading rows);
* its **provenance** (:attr:`Dataset.provenance`: the files whose bytes are the data, or the
  generator and settings that make it; MLflow records it as the run's dataset, with a digest
  of those bytes or settings);
* its **rows, views and raw-input baseline** (:attr:`Dataset.build`: a
  :class:`~dist_contrast.data.build.DataBundle` whose training source reads rows a batch at a
  time and makes each view with the dataset's augmentation, and whose ``preprocessing`` and
  ``raw_example`` say what a raw row is, so the raw-input kNN baseline and a trained encoder
  start from the same rows);
* its **settings**: the typed ``data.*`` fields it reads (:attr:`Dataset.fields`; setting
  another dataset's field is refused) and its own keys under ``data.params``
  (:attr:`Dataset.options`).

:func:`register_dataset` adds one (see "Add a dataset" in docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dist_contrast.data.build import DataBundle
    from dist_contrast.data.config import DataConfig
    from dist_contrast.data.preprocess import Preprocessing


@dataclass(frozen=True)
class DataShape:
    """A dataset's size before any row is read. Shape: rows [rows, *input_shape]."""

    rows: int  # all rows, training and held-out
    input_shape: tuple[int, ...]  # one row as the encoder takes it
    # Paired data: the sides ("query", "document") of numeric feature rows, and their width.
    feature_widths: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Provenance:
    """Where the rows come from, as the run's MLflow dataset records it.

    ``files``: the data file, then a labels file (digest of their bytes); else ``generator``:
    the code that makes the rows, its seed, size and settings (digest of those).
    ``label_column``: a file's label column (None for a labels file or no labels).
    """

    files: tuple[str, ...] = ()
    generator: Mapping[str, Any] = field(default_factory=dict)
    label_column: str | None = None

    @property
    def path(self) -> str | None:
        return self.files[0] if self.files else None

    @property
    def labels_path(self) -> str | None:
        return self.files[1] if len(self.files) > 1 else None


@dataclass(frozen=True)
class Dataset:
    """One data source, declared once (the module docstring lists what each part is for).

    ``build(cfg, seed, preprocessing)``: the data, split and ready to train; ``preprocessing``
    (None when training) is a trained encoder's, given when new rows are evaluated: a dataset
    whose preprocessing depends on its rows (file data's training-split statistics) applies
    it instead of its own, one whose preprocessing is fixed ignores it.
    ``check(cfg)``: the dataset's own rules on its settings (a ``ValueError``, one line).
    ``images``: rows are images [C, H, W] (what a CNN encoder needs). ``text``: items are
    (query, document) texts, for the text encoders (``model.name`` bow or transformer), and
    the held-out rows are a retrieval task (``DataBundle.retrieval``). ``in_memory``: each
    worker holds the rows (counted by the driver's memory check); False for rows generated
    on demand. ``build_shard(cfg, seed, rank, world_size)``: worker ``rank``'s part of the
    data, for a dataset whose workers may each read only their own rows (None: every worker
    builds the whole data). ``validate(cfg, seed)``: every row checked (a ``DataError`` line
    at the first mistake) and the training rows and input shape given, without holding the
    rows: the driver calls it, when set, instead of ``build`` (such a dataset has no classes).
    """

    build: Callable[[DataConfig, int, Preprocessing | None], DataBundle]
    shape: Callable[[DataConfig], DataShape]
    provenance: Callable[[DataConfig, int], Provenance]
    fields: frozenset[str] = frozenset()
    options: frozenset[str] = frozenset()
    check: Callable[[DataConfig], None] | None = None
    images: bool = False
    in_memory: bool = True
    text: bool = False
    build_shard: Callable[[DataConfig, int, int, int], DataBundle] | None = None
    validate: Callable[[DataConfig, int], DataShape] | None = None


_REGISTRY: dict[str, Dataset] = {}


def register_dataset(name: str, dataset: Dataset, *, replace: bool = False) -> None:
    """Make ``dataset`` selectable as ``data.name=name`` (in every process that registers it:
    the driver and, in their training loop, the Ray workers)."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"a dataset named {name!r} is already registered")
    _REGISTRY[name] = dataset


def dataset_names() -> tuple[str, ...]:
    """Every registered dataset's name, in registration order."""
    return tuple(_REGISTRY)


def get_dataset(name: str) -> Dataset:
    """The registry entry for ``name``; a one-line ``ValueError`` naming the choices otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"data.name={name!r} is unknown; choose one of "
                         f"{', '.join(_REGISTRY)} (or register it with register_dataset)")
    return _REGISTRY[name]


def all_fields() -> frozenset[str]:
    """The typed ``data.*`` fields some registered dataset reads as its own."""
    return frozenset().union(*(dataset.fields for dataset in _REGISTRY.values()))
