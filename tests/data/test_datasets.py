import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dist_contrast.data import DataConfig, build_data, make_loader
from tests.data.helpers import SMALL_SYNTHETIC


@pytest.fixture(scope="module")
def npy_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("npy")
    rng = np.random.default_rng(0)
    np.save(folder / "x.npy", rng.normal(size=(50, 6)).astype(np.float64))
    np.save(folder / "y.npy", np.array(["cat", "dog"] * 25))
    return DataConfig(name="file", path=str(folder / "x.npy"), labels_path=str(folder / "y.npy"))


@pytest.fixture(scope="module")
def parquet_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("pq") / "x.parquet"
    rng = np.random.default_rng(1)
    table = pa.table({"a": rng.normal(size=40), "b": rng.integers(0, 5, 40), "y": [7, 9] * 20})
    pq.write_table(table, path)
    return DataConfig(name="file", path=str(path), label_column="y")


def _configs(request):
    return {
        "synthetic": SMALL_SYNTHETIC,
        "digits": DataConfig(name="digits"),
        "npy": request.getfixturevalue("npy_config"),
        "parquet": request.getfixturevalue("parquet_config"),
    }


EXPECTED = {  # input_shape, num_classes, total rows
    "synthetic": ((16,), 10, 600),
    "digits": ((1, 8, 8), 10, 1797),
    "npy": ((6,), 2, 50),
    "parquet": ((2,), 2, 40),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_shapes_dtypes_and_splits(name, request):
    bundle = build_data(_configs(request)[name], seed=3)
    shape, num_classes, rows = EXPECTED[name]
    assert bundle.input_shape == shape and bundle.num_classes == num_classes
    (train_x, train_y), (test_x, test_y) = bundle.eval_train, bundle.eval_test
    assert train_x.shape == (len(bundle.train), *shape) and train_x.dtype == torch.float32
    assert len(bundle.train) + len(test_x) == rows
    assert test_x.shape[1:] == shape and len(test_x) == round(0.2 * rows)
    assert train_y is not None and test_y is not None
    assert train_y.dtype == torch.int64 and train_y.shape == (len(train_x),)
    assert int(train_y.min()) >= 0 and int(train_y.max()) < num_classes
    item = bundle.train[5]
    assert set(item) == {"view1", "view2", "index", "label"}
    assert item["view1"].shape == shape and item["view1"].dtype == torch.float32
    assert item["index"] == 5 and item["label"] == int(train_y[5])


def test_digits_values_and_held_out_rows_not_in_train():
    bundle = build_data(DataConfig(name="digits"))
    train_x, test_x = bundle.eval_train[0], bundle.eval_test[0]
    assert float(train_x.min()) >= 0.0 and float(train_x.max()) <= 1.0
    item = bundle.train[0]
    assert float(item["view1"].min()) >= 0.0 and float(item["view1"].max()) <= 1.0
    # sklearn's digits contain a few exact duplicate images, so compare row sets loosely.
    train_rows = {tuple(row.flatten().tolist()) for row in train_x}
    shared = sum(tuple(row.flatten().tolist()) in train_rows for row in test_x)
    assert shared < 5


def test_unlabelled_file_gives_minus_one_and_no_classes(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(30, 4)))
    bundle = build_data(DataConfig(name="file", path=str(tmp_path / "x.npy")))
    assert bundle.num_classes is None and bundle.eval_train[1] is None
    assert bundle.eval_test[1] is None and bundle.train[0]["label"] == -1


def test_file_standardised_with_train_statistics(npy_config):
    train_x = build_data(npy_config).eval_train[0]
    assert torch.allclose(train_x.mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(train_x.std(0), torch.ones(6), atol=1e-5)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_views_differ_and_are_deterministic_in_seed_epoch_index(name, request):
    cfg = _configs(request)[name]
    bundle, again = build_data(cfg, seed=1), build_data(cfg, seed=1)
    first = bundle.train[7]
    assert not torch.equal(first["view1"], first["view2"])
    same = again.train[7]  # a fresh dataset object: nothing cached
    assert torch.equal(first["view1"], same["view1"]) and torch.equal(first["view2"], same["view2"])
    bundle.train.set_epoch(1)
    later = bundle.train[7]
    assert not torch.equal(first["view1"], later["view1"])
    bundle.train.set_epoch(0)
    assert torch.equal(bundle.train[7]["view1"], first["view1"])
    other_seed = build_data(cfg, seed=2).train
    other_seed.set_epoch(0)
    assert not torch.equal(other_seed.views([7], 0)[0][0], first["view1"])


def test_views_do_not_depend_on_batch_composition():
    data = build_data(DataConfig(name="digits")).train
    alone = data.views([11], epoch=4)[0][0]
    in_batch = data.views([3, 11, 500], epoch=4)[0][1]
    assert torch.equal(alone, in_batch)


def test_zero_strength_augmentation_is_the_identity():
    off = {"max_shift": 0, "max_rotation_deg": 0, "noise_std": 0, "erase_prob": 0}
    data = build_data(DataConfig(name="digits", augment=off)).train
    ids = torch.arange(100)
    assert torch.allclose(data.views(ids, epoch=0)[0], data.clean(ids), atol=1e-6)


def test_views_stay_closer_to_their_own_image():
    data = build_data(DataConfig(name="digits")).train
    ids = torch.arange(300)
    views = torch.nn.functional.normalize(data.views(ids, epoch=0)[0].flatten(1), dim=1)
    clean = torch.nn.functional.normalize(data.clean(ids).flatten(1), dim=1)
    similarity = views @ clean.T
    assert similarity.diag().mean() > similarity.mean() + 0.05


def test_loader_batches_collate_to_tensors():
    bundle = build_data(SMALL_SYNTHETIC)
    loader = make_loader(bundle.train, batch_size=64, rank=0, world_size=1, seed=0, epoch=2)
    batch = next(iter(loader))
    assert batch["view1"].shape == (64, 16) and batch["index"].dtype == torch.int64
    assert torch.equal(batch["view1"], bundle.train.views(batch["index"], epoch=2)[0])
    assert torch.equal(batch["label"], bundle.train.labels(batch["index"]))


def test_loader_with_worker_processes_matches_main_process():
    bundle = build_data(DataConfig(name="digits"))
    kwargs = {"batch_size": 256, "rank": 0, "world_size": 1, "seed": 5, "epoch": 1}
    main = list(make_loader(bundle.train, **kwargs))
    workers = list(make_loader(bundle.train, num_workers=2, **kwargs))
    assert len(main) == len(workers)
    for a, b in zip(main, workers, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["view1"], b["view1"])


def test_eval_splits_are_capped_by_a_seeded_subset():
    cfg = DataConfig(num_samples=1000, dim=8, signal_dim=2, max_eval_train=100, max_eval_test=50)
    bundle = build_data(cfg)
    assert bundle.eval_train[0].shape == (100, 8) and bundle.eval_test[0].shape == (50, 8)
    assert len(bundle.train) == 800


def test_config_seed_overrides_run_seed():
    cfg = DataConfig(num_samples=100, dim=8, signal_dim=2, seed=9)
    a, b = build_data(cfg, seed=0), build_data(cfg, seed=1)
    assert torch.equal(a.eval_train[0], b.eval_train[0])
