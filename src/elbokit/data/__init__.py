"""Datasets by name: MNIST and friends, scikit-learn's digits, synthetic linear-Gaussian data, the ``pbmc`` count
matrix, user files (``.npy``, ``.npz``, ``.csv``, and count matrices ``.h5ad`` and ``.mtx``); and supervised
tables (x, y) for Bayesian neural networks: :func:`load_table` (``diabetes``, ``boston``, ``concrete``, a CSV's
target column, or an image dataset's labels).

>>> from elbokit.data import load, available
>>> available()
['mnist', 'binarized-mnist', 'fashion-mnist', 'digits', 'synthetic', 'dsprites', 'dsprites-small', 'pbmc']
>>> ds = load("digits", seed=0)
>>> ds.train.shape, ds.image_shape, ds.support
(torch.Size([1437, 64]), (8, 8), 'unit')

Every dataset is three splits of flat float32 vectors (N, D); see :class:`Dataset`. Bad requests and bad files
raise :class:`DataError` (a ``ValueError``) with a one-line message naming the file or the name.
"""

from elbokit.data.base import DataError, Dataset
from elbokit.data.counts import CountMatrix, load_h5ad, load_mtx, read_h5ad, read_mtx
from elbokit.data.fetch import MNIST_FILES, MNIST_MIRROR, cache_root, download
from elbokit.data.files import load_file
from elbokit.data.idx import BINARIZE_EVAL_SEED, FASHION_MNIST_DIR, read_idx
from elbokit.data.registry import available, load, register

# After idx: datasets are listed in registration order, the MNIST family first.
from elbokit.data.small import synthetic_model

# After small: the sprites with known factors (dsprites, dsprites-small).
from elbokit.data.dsprites import DSPRITES_FACTORS, known_factors, load_factors  # isort: skip
from elbokit.data.tables import TABLES, Table, load_table

# After small: pbmc is listed last.
from elbokit.data.pbmc import PBMC_SHAPE, pbmc_folders, read_rdb  # isort: skip

__all__ = [
    "BINARIZE_EVAL_SEED",
    "DSPRITES_FACTORS",
    "FASHION_MNIST_DIR",
    "MNIST_FILES",
    "MNIST_MIRROR",
    "PBMC_SHAPE",
    "TABLES",
    "CountMatrix",
    "DataError",
    "Dataset",
    "Table",
    "available",
    "cache_root",
    "download",
    "known_factors",
    "load",
    "load_factors",
    "load_file",
    "load_h5ad",
    "load_mtx",
    "load_table",
    "pbmc_folders",
    "read_h5ad",
    "read_idx",
    "read_mtx",
    "read_rdb",
    "register",
    "synthetic_model",
]
