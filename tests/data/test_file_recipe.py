"""Recipe "add a dataset" (docs/architecture.md): a parquet file and the config the recipe shows
give a dataset the trainer can load, with labels kept for evaluation only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dist_contrast.config import load_config
from dist_contrast.data import build_data, make_loader

RECIPE = """\
experiment:
  name: my-data
data:
  name: file
  path: {path}
  label_column: label
model:
  name: mlp
  embedding_dim: 64
trainer:
  num_workers: 2
  batch_size: 128
  max_steps: 1000
"""


def test_the_recipe_config_loads_the_users_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    species = np.array(["ant", "bee", "cat"])[rng.integers(0, 3, 300)]
    columns = {f"f{i}": rng.normal(size=300) for i in range(8)}
    pq.write_table(pa.table({**columns, "label": species}), tmp_path / "features.parquet")
    config = tmp_path / "my_data.yaml"
    config.write_text(RECIPE.format(path=tmp_path / "features.parquet"))

    cfg = load_config(config)
    data = build_data(cfg.data, seed=cfg.experiment.seed)
    assert data.input_shape == (8,) and data.num_classes == 3
    held_out = data.eval_test[0].shape[0]
    assert held_out == round(0.2 * 300) and len(data.train) == 300 - held_out
    # Standardised with the training split's statistics.
    train_features = data.eval_train[0]
    assert abs(float(train_features.mean())) < 1e-5
    batch = next(iter(make_loader(data.train, batch_size=16, rank=0, world_size=2, seed=0,
                                  epoch=0)))
    assert batch["view1"].shape == batch["view2"].shape == (16, 8)
    assert not np.allclose(batch["view1"].numpy(), batch["view2"].numpy())
