"""Run directories: what ``elbokit fit`` writes and ``evaluate`` / ``sample`` read back.

A run directory holds ``config.json`` (the RunConfig), ``dataset.json`` (what was trained on),
``metrics.jsonl`` (one line per epoch), ``checkpoint.safetensors`` with ``state.json``, and what evaluation adds
beside them (``evaluation.json``, ``samples.png``, ``reconstructions.png``; ``diagnostics.json`` from
``elbokit diagnose``; ``report.html`` from ``elbokit report``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from elbokit._io import atomic_write
from elbokit.config import RunConfig, parse_guide
from elbokit.data import Dataset, available, load
from elbokit.data.registry import FILE_SUFFIXES
from elbokit.estimators import elbo, log_marginal
from elbokit.estimators._pareto import KHAT_THRESHOLD
from elbokit.models import VAE, Guide
from elbokit.models.base import FixedGuide
from elbokit.report.images import image_grid, write_png
from elbokit.rundir import (
    REPLACED,
    discard_replaced,
    locked,
    remove_stale_temporaries,
    replaced_folder,
    restore,
    set_aside,
)
from elbokit.train.checkpoint import CHECKPOINT, STATE, load_checkpoint, load_model_state
from elbokit.train.loop import METRICS, resolve_device

CONFIG = "config.json"
DATASET = "dataset.json"
EVALUATION = "evaluation.json"
#: Files a run consists of: their presence marks a folder as holding a run.
RUN_FILES = (CONFIG, DATASET, METRICS, CHECKPOINT, STATE, EVALUATION, "samples.png", "reconstructions.png",
             "diagnostics.json", "report.html")  # fmt: skip
#: What --overwrite sets aside: the run's files and what was derived from it (a sweep over its β).
REPLACED_BY_OVERWRITE = (*RUN_FILES, "sweep.json", "sweep", "tmp")
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU, "gelu": nn.GELU,
}  # fmt: skip


def load_data(config: RunConfig) -> Dataset:
    return load(config.data, data_dir=config.data_dir, binarize=config.binarize, seed=config.seed)


def build_model(config: RunConfig, data_dim: int) -> VAE:
    """The VAE a config describes: MLP encoder (the guide: Gaussian or flow) and mirrored decoder, the chosen
    likelihood; float32, the datasets' dtype, whatever torch's default dtype."""
    guide = parse_guide(config.guide)
    model = VAE.mlp(
        data_dim,
        config.latent_dim,
        hidden=config.hidden,
        activation=ACTIVATIONS[config.activation],
        likelihood=config.likelihood,
        covariance=guide.covariance,
        guide=guide.kind,
        transforms=guide.transforms,
    )
    return model.to(torch.float32)


def new_model(config: RunConfig, data: Dataset) -> VAE:
    """The freshly initialised model of a run: seeded, checked against the data's support, and with the
    decoder's output bias at the training data's mean (Burda et al. 2016). A resumed run then loads its
    checkpoint over it."""
    check_model_size(config, data.data_dim, resolve_device(config.device))
    torch.manual_seed(config.seed)
    model = build_model(config, data.data_dim)
    check_data(model, data)
    model.init_output_bias(data.train[: config.limit].mean(0))
    return model


def check_data(model: VAE, data: Dataset) -> None:
    """Refuse data outside the likelihood's support (e.g. values outside [0, 1] for a Bernoulli)."""
    for split in ("train", "validation", "test"):
        try:
            model.observation.check(data.split(split))
        except ValueError as err:
            raise ValueError(f"{data.name} ({split} split): {err}") from None


def holds_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def is_data_file(data: str) -> bool:
    """Whether a run's ``data`` setting names a file rather than a registered dataset (as :func:`load` decides)."""
    path = Path(data).expanduser()
    return data not in available() and (path.suffix.lower() in FILE_SUFFIXES or path.exists())


def absolute_data(config: RunConfig) -> RunConfig:
    """``config`` with a data file and ``data_dir`` as absolute paths, so that the run reads the same file from
    any working folder (a registered dataset name is kept as it is)."""
    changes: dict[str, Any] = {}
    if is_data_file(config.data):
        changes["data"] = str(Path(config.data).expanduser().absolute())
    if config.data_dir is not None:
        changes["data_dir"] = str(Path(config.data_dir).expanduser().absolute())
    return dataclasses.replace(config, **changes) if changes else config


def describe_data(config: RunConfig, data: Dataset) -> dict[str, Any]:
    """What ``dataset.json`` records: the dataset's description and, for a data file, its size and SHA-256, so
    that a later command notices a file that changed under the run."""
    described = data.describe()
    if is_data_file(config.data):
        path = Path(config.data)
        described["file"] = {"path": str(path), "bytes": path.stat().st_size, "sha256": _sha256(path)}
    return described


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_data_file(run_dir: Path, config: RunConfig, *, contents: bool = True) -> None:
    """Refuse (one line) a run whose data file is missing or (``contents``) has changed since the run was trained
    on it."""
    recorded = read_description(run_dir).get("file")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
        return  # a named dataset, or a run from before files were recorded
    path = Path(config.data)
    if not path.is_file():
        raise ValueError(f"the run's data file {path} is missing (the run was trained on it)")
    if contents and (path.stat().st_size != recorded.get("bytes") or _sha256(path) != recorded["sha256"]):
        raise ValueError(f"the run's data file {path} has changed since the run was trained on it (its size or "
                         "SHA-256 differs from dataset.json)")  # fmt: skip


#: Bytes of memory a training step needs per parameter: the weights, their gradient and Adam's two moments.
BYTES_PER_PARAMETER = 16


def check_model_size(config: RunConfig, data_dim: int, device: torch.device) -> None:
    """Refuse a model whose parameters and optimizer state would not fit in the device's available memory."""
    hidden = list(config.hidden)
    encoder = _mlp_parameters([data_dim, *hidden, 2 * config.latent_dim])
    decoder = _mlp_parameters([config.latent_dim, *hidden[::-1], 2 * data_dim])
    activations = 4 * config.batch_size * config.k * (sum(config.hidden) * 2 + 3 * data_dim) * 4
    needed = (encoder + decoder) * BYTES_PER_PARAMETER + activations
    available = available_memory(device)
    if available is not None and needed > available:
        raise ValueError(f"the model (hidden {','.join(map(str, config.hidden))}, latent_dim {config.latent_dim}, "
                         f"batch_size {config.batch_size}, k {config.k}) needs about {_gib(needed)} to train; "
                         f"{device.type} has {_gib(available)} available")  # fmt: skip


def _mlp_parameters(sizes: list[int]) -> int:
    """Weights and biases of an MLP with these layer sizes (an upper bound for every guide and likelihood's
    output heads, which are at most twice the width)."""
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes))


def available_memory(device: torch.device) -> int | None:
    """Bytes of memory free for new tensors on ``device`` (None where the OS does not say)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


class RunWriter:
    """What ``fit`` and ``sweep`` hold while they write a run directory: its lock, and the run an --overwrite set
    aside until the new run's first checkpoint (:meth:`committed`)."""

    def __init__(self, path: Path, aside: Path | None) -> None:
        self.path, self.aside = path, aside

    def committed(self) -> None:
        """The new run has written a checkpoint: the set-aside run is no longer needed."""
        if self.aside is not None:
            discard_replaced(self.path)
            self.aside = None


@contextmanager
def writing_run(path: Path, config: RunConfig, data: Dataset, *, resume: bool = False,
                overwrite: bool = False) -> Iterator[RunWriter]:  # fmt: skip
    """Open ``path`` for writing a run (everything about the run already checked): take its lock, remove stale
    temporary files, set an old run aside (``overwrite``), write ``config.json`` and ``dataset.json`` (on resume,
    the config again when its epoch count grew, and the dataset when a kill left it unwritten). A failure
    before the new run's first checkpoint moves the old run back."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    with locked(path):
        if resume and not holds_run(path):
            raise ValueError(f"{path} holds no run to resume")
        if not (resume or overwrite) and holds_run(path):
            raise ValueError(f"{path} already holds a run; pass --resume to continue it or --overwrite to replace it")
        remove_stale_temporaries(path)
        aside = set_aside(path, REPLACED_BY_OVERWRITE) if overwrite else replaced_folder(path)
        writer = RunWriter(path, aside)
        try:
            if not resume or not (path / CONFIG).exists() or RunConfig.load(path / CONFIG) != config:
                write_json(path / CONFIG, config.to_dict())
            if not resume or not (path / DATASET).exists():
                write_json(path / DATASET, describe_data(config, data))
            yield writer
        except BaseException:
            if overwrite and writer.aside is not None and not (path / CHECKPOINT).exists():
                restore(path, REPLACED_BY_OVERWRITE)
            raise


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, (json.dumps(value, indent=2) + "\n").encode())


@dataclass
class Run:
    """A trained run, opened from its directory."""

    path: Path
    config: RunConfig
    data: Dataset
    model: VAE
    state: dict[str, Any]


def open_run(path: Path, *, device: str | None = None) -> Run:
    """Read a run's config, data and checkpoint (never unpickling); ValueError for anything missing or wrong,
    including a data file that changed since training and a config.json that does not describe the checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"run directory {path} does not exist")
    config = RunConfig.load(path / CONFIG)
    if not (path / CHECKPOINT).exists() and replaced_folder(path) is not None:
        raise ValueError(f"no checkpoint in {path}: its new run stopped before writing one; the run it replaced "
                         f"is kept in {path / REPLACED}")  # fmt: skip
    checkpoint = load_checkpoint(path)
    check_data_file(path, config, contents=False)
    data = load_data(config)
    trained_dim = read_description(path).get("data_dim")
    if trained_dim is not None and trained_dim != data.data_dim:
        raise ValueError(f"{config.data} now has dimension {data.data_dim}; the run was trained on {trained_dim}")
    check_data_file(path, config)
    model = build_model(config, data.data_dim)
    load_model_state(model, checkpoint, source=f"{path / CHECKPOINT}")
    saved = checkpoint.state.get("config", {})
    differs = [name for name, value in config.to_dict().items()
               if name not in ("epochs", "quiet", "device") and name in saved and saved[name] != value]  # fmt: skip
    if differs:
        raise ValueError(f"{path / CONFIG} and its checkpoint describe different runs ({differs[0]} differs); "
                         "is another command replacing the run?")  # fmt: skip
    check_data(model, data)
    model.to(resolve_device(device or config.device)).eval()
    return Run(path, config, data, model, checkpoint.state)


@dataclass(frozen=True)
class Evaluation:
    """Test-set numbers of a run, in nats per data point (means over the n points)."""

    elbo: float
    log_px: float
    log_px_stderr: float  # Monte-Carlo standard error of the mean log p(x) estimate
    kl: float
    reconstruction: float
    n: int
    k: int
    split: str
    bits_per_dim: float | None  # -log p(x) / (D log 2), for images
    min_ess: float  # smallest effective sample size of the importance weights over the points
    pareto_k_max: float  # largest Pareto k-hat of the weights' tail over the points
    pareto_k_over_threshold: int  # points whose k-hat exceeds 0.7: their estimate and stderr are unreliable
    # the importance-sampling proposal: "encoder" (q(z|x)) or "refined" (q refined per point in the
    # full-covariance family and mixed defensively with a widened copy: elbokit.diagnostics.refined_proposal)
    proposal: str = "encoder"
    kl_method: str = "analytic"  # how the ELBO's KL was computed: "analytic" (closed form) or "mc" (a flow's q)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


PROPOSALS = ("encoder", "refined")


def evaluate(run: Run, *, k: int = 1000, split: str = "test", limit: int | None = None, batch_size: int = 100,
             seed: int = 0, proposal: str = "refined", refine_steps: int = 300,
             progress: bool = False) -> Evaluation:  # fmt: skip
    """ELBO (analytic KL where registered) and importance-sampled log p(x) with its standard error on a split.

    ``proposal="refined"`` draws the importance samples from the encoder's q refined per point in the
    full-covariance Gaussian family (``refine_steps`` steps) and mixed defensively with a widened copy
    (:func:`elbokit.diagnostics.refined_proposal`): on a mean-field VAE its weights are far lighter-tailed than
    the encoder's own (see the Pareto k-hat count). ``"encoder"`` uses q(z|x) as it is. ``progress``: a progress
    bar over the batches on stderr.
    """
    from elbokit.diagnostics.reference import refined_proposal

    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {', '.join(PROPOSALS)}, got {proposal!r}")
    x_all = run.data.split(split)[:limit]
    device = next(run.model.parameters()).device
    totals = {"elbo": 0.0, "kl": 0.0, "reconstruction": 0.0, "log_px": 0.0, "var": 0.0}
    min_ess, khat_max, khat_over, kl_method = math.inf, -math.inf, 0, "analytic"
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        starts = range(0, x_all.shape[0], batch_size)
        bar = tqdm(starts, desc="evaluate", unit="batch", leave=False, disable=not (progress and len(starts) > 1))
        for start in bar:
            x = x_all[start : start + batch_size].to(device)
            guide: Guide = run.model.encoder
            if proposal == "refined":  # an optimisation per point: autograd on, outside inference mode
                r = refined_proposal(run.model, run.model.encoder, x, steps=refine_steps)
                guide = FixedGuide(r)
            with torch.inference_mode():
                bound = elbo(run.model, run.model.encoder, x)
                kl_method = bound.kl_method
                estimate = log_marginal(run.model, guide, x, k=k, warn=False)
            totals["elbo"] += float(bound.value.sum())
            totals["kl"] += float(bound.kl.sum())
            totals["reconstruction"] += float(bound.reconstruction.sum())
            totals["log_px"] += float(estimate.value.sum())
            totals["var"] += float(estimate.stderr.square().sum())
            min_ess = min(min_ess, float(estimate.ess.min()))
            assert estimate.pareto_k is not None
            khat = estimate.pareto_k[torch.isfinite(estimate.pareto_k)]
            khat_max = max(khat_max, float(khat.max())) if khat.numel() else khat_max
            khat_over += int((estimate.pareto_k > KHAT_THRESHOLD).sum())
    n = x_all.shape[0]
    log_px = totals["log_px"] / n
    bits = -log_px / (run.data.data_dim * math.log(2)) if run.data.image_shape is not None else None
    return Evaluation(
        elbo=totals["elbo"] / n, log_px=log_px, log_px_stderr=math.sqrt(totals["var"]) / n, kl=totals["kl"] / n,
        reconstruction=totals["reconstruction"] / n, n=n, k=k, split=split, bits_per_dim=bits, min_ess=min_ess,
        pareto_k_max=khat_max, pareto_k_over_threshold=khat_over, proposal=proposal, kl_method=kl_method,
    )  # fmt: skip


#: The longest evaluation the CLI starts: beyond it, a smaller --k or --limit is asked for.
MAX_EVALUATION_SECONDS = 24 * 3600


def evaluation_seconds(run: Run, *, k: int, n: int, batch_size: int = 100, proposal: str = "refined",
                       refine_steps: int = 300) -> float:  # fmt: skip
    """About how long :func:`evaluate` takes here: one batch is timed at a small k (and a few refinement steps)
    and scaled to ``k``, ``refine_steps`` and the number of batches. The draws do not disturb the seeded ones."""
    from elbokit.diagnostics.reference import refined_proposal

    device = next(run.model.parameters()).device
    x = run.data.test[: min(batch_size, n)].to(device)
    batches = math.ceil(n / x.shape[0])
    pilot_k, pilot_steps = min(k, 32), min(refine_steps, 3)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        started = time.perf_counter()
        with torch.inference_mode():
            log_marginal(run.model, run.model.encoder, x, k=pilot_k, warn=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - started) * k / pilot_k
        if proposal == "refined":
            started = time.perf_counter()
            refined_proposal(run.model, run.model.encoder, x, steps=pilot_steps)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += (time.perf_counter() - started) * refine_steps / pilot_steps
    return seconds * batches


def duration(seconds: float) -> str:
    """``3 min``, ``2.5 h``, ``41 days``: a rough duration for a message."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.2g} {unit}"
    return f"{seconds:.2g} s"


def check_sample_size(run: Run, n: int, *, image: bool) -> None:
    """Refuse ``n`` samples that would not fit in memory (or in one picture)."""
    if image and n > MAX_GRID:
        raise ValueError(f"a PNG grid holds at most {MAX_GRID} samples, got --n {n}; write more with --out FILE.npy")
    device = next(run.model.parameters()).device
    widths = run.config.latent_dim + sum(run.config.hidden) + 3 * run.data.data_dim
    needed, available = 4 * n * widths, available_memory(device)
    if available is not None and needed > available:
        raise ValueError(f"--n {n} samples need about {_gib(needed)}; {device.type} has {_gib(available)} available")


#: The most samples ``elbokit sample`` draws into one PNG grid.
MAX_GRID = 10_000


def read_description(run_dir: Path) -> dict[str, Any]:
    """The run's ``dataset.json`` (what it was trained on), or {} when missing or unreadable."""
    try:
        described = json.loads((run_dir / DATASET).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return described if isinstance(described, dict) else {}


def image_shape(run_dir: Path) -> tuple[int, int] | None:
    shape = read_description(run_dir).get("image_shape")
    return (int(shape[0]), int(shape[1])) if shape else None


def write_images(path: Path, images: Tensor, shape: tuple[int, int], *, columns: int | None = None) -> None:
    write_png(path, image_grid(images.detach().float().cpu().clamp(0, 1), image_shape=shape, columns=columns))


@torch.inference_mode()
def write_pictures(run: Run, *, n: int = 64, seed: int = 0) -> list[Path]:
    """``samples.png`` (decoded z ~ p(z)) and ``reconstructions.png`` (test images above their reconstructions)."""
    shape = run.data.image_shape
    if shape is None:
        return []
    device = next(run.model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    samples = run.model.sample(n, generator=gen)
    columns = min(8, run.data.test.shape[0])
    rows = max(1, min(4, run.data.test.shape[0] // columns))
    originals = run.data.test[: columns * rows].to(device)
    recon = run.model.reconstruct(originals)
    # Rows alternate: a row of originals, then their reconstructions.
    pairs = torch.stack([originals.view(rows, columns, -1), recon.view(rows, columns, -1)], 1)
    pairs = pairs.reshape(-1, originals.shape[1])
    written = [run.path / "samples.png", run.path / "reconstructions.png"]
    write_images(written[0], samples, shape)
    write_images(written[1], pairs, shape, columns=columns)
    return written
