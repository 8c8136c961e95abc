"""Nothing from a run folder reaches ``report.html`` live: markup planted in any file of a real run (the diagnostics,
the checkpoint's metadata and state.json, dataset.json, config.json, metrics.jsonl, sweep.json, the folder's own
name) is escaped, recomputed or refused with one line, so the page keeps its promise of no JavaScript. The run
reads its files (:meth:`Run.report`) and hands their contents to :func:`elbokit.report.render`, which escapes
whatever it is given."""

from __future__ import annotations

import copy
import dataclasses
import html
import json
import shutil
import warnings
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors

import elbokit.report
import elbokit.report.sections
from elbokit.cli import main
from elbokit.config import RunConfig
from elbokit.diagnostics import AisFigure, Diagnosis, GapSummary, RatePoint, SweepPoint
from elbokit.report.images import png_bytes
from elbokit.report.sections import numbers_only
from elbokit.runs import Run, current_diagnosis, open_run, read_description, read_history
from elbokit.runs.run import read_sweep

PAYLOADS = ("<script>alert(1)</script>", '"><script>x</script>', "<img src=x onerror=alert(1)>")
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "section", "details", "summary",
                "table", "tbody", "tr", "th", "td", "figure", "img", "figcaption", "code"}  # fmt: skip
#: Fields of diagnostics.json the report never reads: a payload there may stay in the file, and never shows.
UNREAD = {("run",), ("epoch",), ("seconds",), ("collapse_q",), ("min_ess",), ("reconstruction",), ("kl",),
          ("gaps", "refine_steps")}  # fmt: skip
SMALL = {"k": 10, "limit": 20}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch on 200 of the 8x8 digits, latent dimension 2, and the diagnostics of its checkpoint."""
    out = tmp_path_factory.mktemp("injection") / "run"
    argv = ["fit", "--data", "digits", "--out", str(out), "--epochs", "1", "--latent-dim", "2", "--hidden", "16",
            "--limit", "200", "--quiet", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    with warnings.catch_warnings():  # 20 points, k = 10: diagnose may warn of heavy-tailed weights
        warnings.simplefilter("ignore")
        Run.open(out).diagnose(**SMALL, split="test", refine_steps=20, seed=0)
    return out


@pytest.fixture(autouse=True)
def _fast_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages in a fraction of the time, the same text: each figure, still drawn, is encoded as one grey pixel. A
    figure reaches the page only as base64 PNG, which cannot carry markup; encoding it (savefig) is most of a
    page's time."""
    pixel = png_bytes(torch.full((1, 1), 0.5))
    monkeypatch.setattr(elbokit.report.sections, "_png", lambda figure: pixel)


@pytest.fixture
def run(base_run: Path, tmp_path: Path) -> Path:
    copied = tmp_path / "run"
    shutil.copytree(base_run, copied)
    return copied


@pytest.fixture
def diagnose_calls(base_run: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """``diagnose`` replaced by the base run's own diagnostics (the numbers are not under test here), labelled
    with the run's checkpoint as :meth:`Run.diagnose` labels them; the list records each recomputation."""
    pristine = json.loads((base_run / "diagnostics.json").read_text())
    calls: list[Path] = []

    def fake(self: Run, **_: Any) -> Diagnosis:
        calls.append(self.path)
        d = Diagnosis.from_dict(copy.deepcopy(pristine))
        return dataclasses.replace(d, epoch=self.state.get("epoch"), step=self.state.get("step"))

    monkeypatch.setattr(Run, "diagnose", fake)
    yield calls


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.handlers: list[str] = []
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")


def assert_inert(page: str) -> None:
    """Only the page's own tags, no event-handler attribute, and every image inline PNG."""
    parsed = _Tags()
    parsed.feed(page)
    parsed.close()
    assert parsed.tags <= ALLOWED_TAGS, parsed.tags - ALLOWED_TAGS
    assert parsed.handlers == []
    assert parsed.sources and all(src.startswith("data:image/png;base64,") for src in parsed.sources)
    assert "<script" not in page.lower()


def render_or_refuse(run_dir: Path) -> str | None:
    """The page ``elbokit report`` writes, or None where it refused with a one-line ValueError."""
    try:
        return Run.open(run_dir).report(**SMALL).read_text(encoding="utf-8")
    except ValueError as err:
        assert str(err) and "\n" not in str(err)
        return None


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to every string and number in a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path


def _planted(d: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(d)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def _write(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# -- diagnostics.json ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_payload_in_any_diagnostics_field_is_recomputed_or_never_shown(
    run: Path, payload: str, diagnose_calls: list[Path]
) -> None:
    """Each string and number of diagnostics.json in turn replaced by the payload: the file is stale (recomputed,
    never rendered) unless the report never reads that field; all those at once render an inert page."""
    d = _read(run / "diagnostics.json")
    step = _read(run / "state.json")["step"]
    assert current_diagnosis(run, step) is not None  # the run's own file is current
    kept = []
    for path in _leaves(d):
        _write(run / "diagnostics.json", _planted(d, path, payload))
        if current_diagnosis(run, step) is not None:
            kept.append(path)
    # Every field the report draws from was refused (so `diagnose` recomputes it); only unread ones stay.
    assert set(kept) <= UNREAD, set(kept) - UNREAD
    everything = d
    for path in kept:
        everything = _planted(everything, path, payload)
    _write(run / "diagnostics.json", everything)
    page = render_or_refuse(run)
    assert page is not None and diagnose_calls == []
    assert_inert(page)


#: (field, a value of the wrong type or out of range): each makes the file stale, to be recomputed.
WRONG = [
    ("n", "20"), ("n", 20.0), ("n", True), ("n", 0), ("k", None), ("k", [10]), ("step", "2"), ("step", 2.0),
    ("split", "holdout"), ("split", PAYLOADS[0]), ("elbo", "-27.5"), ("elbo", float("nan")), ("elbo", 10**400),
    ("log_px", float("-inf")), ("log_px", False), ("log_px_stderr", {}), ("pareto_k_max", "0.5"),
    ("pareto_k_over_threshold", PAYLOADS[0]), ("pareto_k_over_threshold", 1.5), ("pareto_k_over_threshold", -1),
    ("iwae", "x"), ("iwae", ["x"]), ("iwae", [{"k": "1", "value": -27.0, "stderr": 0.1}]),
    ("iwae", [{"k": 1, "value": PAYLOADS[1], "stderr": 0.1}]), ("iwae", [{"k": 1, "value": -27.0}]),
    ("kl_per_dim", [0.1]), ("kl_per_dim", [0.1, "0.2"]), ("activity", [0.1, None]), ("activity", [0.1, 0.2, 0.3]),
    ("latent_dim", "2"), ("latent_dim", 3), ("active_units", 3), ("active_units", 1.0),
    ("gaps", PAYLOADS[2]), ("gaps.family", PAYLOADS[1]), ("gaps.family", "gaussian"), ("gaps.reference", "mcmc"),
    ("gaps.steps", "300"), ("gaps.n", 2.5), ("gaps.unreliable", None), ("gaps.elbo_optimal", float("inf")),
    ("rate_distortion", []), ("rate_distortion.rate", "0.4"), ("rate_distortion.n", 1.5),
    ("rate_distortion.unexpected", 1.0), ("surgery", None), ("surgery.log_n", PAYLOADS[0]),
    ("surgery.mutual_information", True), ("ais", PAYLOADS[0]), ("ais", {"steps": 300, "value": -27.0}),
    ("ais", {"steps": PAYLOADS[0], "value": -27.0, "stderr": 0.1}), ("activity_threshold", "0.01"),
    ("elbo_kl", PAYLOADS[2]),
] + [(f"gaps.{name}", PAYLOADS[0]) for name in GapSummary._fields] + [
    (f"rate_distortion.{name}", PAYLOADS[0]) for name in RatePoint._fields
]  # fmt: skip


def test_unparseable_files_are_stale_or_refused(run: Path) -> None:
    """Not JSON, or nested past the parser's depth: diagnostics recomputed, metrics and sweep refused."""
    deep = "[" * 100_000 + "]" * 100_000
    step = _read(run / "state.json")["step"]
    for text in ("{", deep, PAYLOADS[0]):
        (run / "diagnostics.json").write_text(text)
        assert current_diagnosis(run, step) is None
        (run / "metrics.jsonl").write_text(text + "\n")
        with pytest.raises(ValueError, match=r"metrics\.jsonl, line 1: not"):
            read_history(run)
        (run / "sweep.json").write_text(text)
        with pytest.raises(ValueError, match=r"sweep\.json"):
            read_sweep(run)
    (run / "diagnostics.json").write_bytes(b"\xff\xfe{}")
    assert current_diagnosis(run, step) is None


@pytest.mark.parametrize(("field", "value"), WRONG, ids=[f"{f}={v!r}"[:60] for f, v in WRONG])
def test_wrong_typed_diagnostics_are_recomputed(base_run: Path, tmp_path: Path, field: str, value: Any) -> None:
    d = _read(base_run / "diagnostics.json")
    step = _read(base_run / "state.json")["step"]
    shutil.copy(base_run / "diagnostics.json", tmp_path / "diagnostics.json")
    assert current_diagnosis(tmp_path, step) is not None
    _write(tmp_path / "diagnostics.json", _planted(d, tuple(field.split(".")), value))
    assert current_diagnosis(tmp_path, step) is None


@pytest.mark.parametrize("payload", PAYLOADS)
def test_render_escapes_every_text_field_of_the_diagnosis_and_every_argument(base_run: Path, payload: str) -> None:
    """Fields shown only as text, set on the Diagnosis with no validation on the way (a dataclass does not check
    types), and every text argument of render: escaped."""
    d = Diagnosis.from_dict(_read(base_run / "diagnostics.json"))
    g, s = d.gaps, d.surgery
    d = dataclasses.replace(
        d, k=payload, split=payload, elbo=payload, pareto_k_max=payload, pareto_k_over_threshold=payload,
        elbo_kl=payload, gaps=g._replace(family=payload, reference=payload, steps=payload, unreliable=payload,
                                         pareto_k_max=payload),
        surgery=s._replace(log_n=payload, marginal_kl=payload, average_kl=payload),
        ais=AisFigure(steps=payload, value=d.log_px, stderr=0.1),
        epoch=payload, step=payload,  # the checkpoint's, shown as text
    )  # fmt: skip
    run = open_run(base_run)
    history = [row | {"train_bound": payload, payload: 1.0} for row in run.metrics]
    page = elbokit.report.render(
        d, model=run.model, x=run.data.test, labels=run.data.test_labels, image_shape=run.data.image_shape,
        discrete=True, history=history, settings=run.config.to_dict() | {payload: payload},
        dataset=read_description(base_run) | {"name": payload}, title=payload,
    )  # fmt: skip
    assert_inert(page)
    assert page.count(html.escape(payload)) >= 15


# -- the checkpoint, state.json, dataset.json, config.json and the folder's name -------------------------------


def _rewrite_checkpoint(run_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the JSON state in the checkpoint's safetensors metadata, keeping its tensors."""
    path = run_dir / "checkpoint.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    state = json.loads(metadata["elbokit"])
    change(state)
    path.write_bytes(save_tensors(tensors, metadata={**metadata, "elbokit": json.dumps(state)}))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_checkpoint_metadata_is_escaped_or_refused(run: Path, payload: str, diagnose_calls: list[Path]) -> None:
    def plant(state: dict[str, Any]) -> None:
        for key in ("epoch", "step", "position", "best", "since_best", "saved"):
            state[key] = payload
        state["sums"] = dict.fromkeys(state.get("sums") or {"bound": 0}, payload)

    _rewrite_checkpoint(run, plant)
    state = _read(run / "state.json")
    plant(state)
    _write(run / "state.json", state)
    page = render_or_refuse(run)  # a checkpoint whose epoch is not a number may be refused where it loads
    if page is not None:
        assert_inert(page)
        assert html.escape(payload) in page  # the epoch is shown, as text
        assert diagnose_calls  # a step that is not the diagnostics' one: they were recomputed


@pytest.mark.parametrize("payload", PAYLOADS)
def test_dataset_config_and_folder_name_are_escaped(base_run: Path, tmp_path: Path, payload: str) -> None:
    run = tmp_path / '"><img src=x onerror=alert(1)>'
    shutil.copytree(base_run, run)
    described = _read(run / "dataset.json")
    planted = {key: payload for key in described if key != "data_dim"}  # data_dim is checked against the data
    _write(run / "dataset.json", described | planted | {payload: payload})
    extra = {payload: payload, "nested": {"note": [payload, 1]}}
    _rewrite_checkpoint(run, lambda state: state["config"].update(extra=extra))  # config.json matches its checkpoint
    config = _read(run / "config.json") | {"extra": extra}
    for field in dataclasses.fields(RunConfig):  # string settings keep the payload only where the run still opens
        if isinstance(config[field.name], str):
            _write(run / "config.json", config | {field.name: payload})
            try:
                open_run(run)
            except ValueError as err:
                assert "\n" not in str(err)
            else:
                config[field.name] = payload
    _write(run / "config.json", config)
    page = render_or_refuse(run)
    assert page is not None
    assert_inert(page)
    assert page.count(html.escape(payload)) >= len(planted) + 2
    # The dataset's dimension is compared with the data's: a payload there is refused, or shown escaped.
    _write(run / "dataset.json", described | {"data_dim": payload})
    page = render_or_refuse(run)
    if page is not None:
        assert_inert(page)


# -- metrics.jsonl and sweep.json ------------------------------------------------------------------------------


def test_non_numbers_in_metrics_are_dropped_and_never_shown(run: Path) -> None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[0] |= {"train_bound": PAYLOADS[0], "validation_kl": {"x": PAYLOADS[1]}, "beta": [PAYLOADS[2]],
                "lr": True, PAYLOADS[0]: 1.0}  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    history = numbers_only(read_history(run))  # what the report draws from the rows it is handed
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for row in history for v in row.values())
    assert "train_bound" not in history[0] and history[0]["train_kl"] == rows[0]["train_kl"]
    page = render_or_refuse(run)
    assert page is not None
    assert_inert(page)
    assert html.escape(PAYLOADS[0]) not in page


@pytest.mark.parametrize("line", [json.dumps(PAYLOADS[0]), json.dumps([PAYLOADS[1]]), "1", "null"])
def test_a_metrics_line_that_is_not_an_object_is_refused(run: Path, line: str) -> None:
    with (run / "metrics.jsonl").open("a") as f:
        f.write(line + "\n")
    assert render_or_refuse(run) is None
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2"):
        read_history(run)


def _sweep_row(run_dir: Path, **change: Any) -> dict[str, Any]:
    return {"beta": 1.0, "rate": 0.4, "distortion": 27.3, "elbo": -27.7, "log_px": -27.5, "log_px_stderr": 0.05,
            "rate_stderr": 0.0, "distortion_stderr": 0.02, "min_ess": 3.0, "path": str(run_dir)} | change  # fmt: skip


@pytest.mark.parametrize("field", [f for f in SweepPoint._fields if f != "path"])
def test_a_sweep_with_a_non_number_is_refused(run: Path, field: str) -> None:
    optional = field in SweepPoint._field_defaults  # a disentanglement score: null for data without factors
    for value in (*PAYLOADS, *(() if optional else (None,)), True, [1.0], {"x": 1.0}):
        _write(run / "sweep.json", [_sweep_row(run, beta=0.5), _sweep_row(run, **{field: value})])
        with pytest.raises(ValueError, match=r"sweep\.json") as err:
            read_sweep(run)
        assert "\n" not in str(err.value)
    assert render_or_refuse(run) is None


def test_a_sweep_with_text_where_text_belongs_is_drawn_inert(run: Path) -> None:
    _write(run / "sweep.json", [_sweep_row(run, beta=0.5), _sweep_row(run, path=PAYLOADS[0])])
    page = render_or_refuse(run)
    assert page is not None and "Rate and distortion" in page
    assert_inert(page)
    for rows in ({"beta": 1.0}, [PAYLOADS[0]], [[1.0]], "x"):
        _write(run / "sweep.json", rows)
        with pytest.raises(ValueError, match=r"sweep\.json"):
            read_sweep(run)
