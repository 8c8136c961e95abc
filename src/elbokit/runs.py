"""Run directories: what ``elbokit fit`` writes and ``evaluate`` / ``sample`` read back.

A run directory holds ``config.json`` (the RunConfig), ``dataset.json`` (what was trained on),
``metrics.jsonl`` (one line per epoch), ``checkpoint.safetensors`` with ``state.json``, and what evaluation adds
beside them (``evaluation.json``, ``samples.png``, ``reconstructions.png``; ``diagnostics.json`` from
``elbokit diagnose``; ``report.html`` from ``elbokit report``).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from elbokit._io import atomic_write
from elbokit.config import RunConfig, parse_guide
from elbokit.data import Dataset, load
from elbokit.estimators import elbo, log_marginal
from elbokit.estimators._pareto import KHAT_THRESHOLD
from elbokit.models import VAE, Guide
from elbokit.models.base import FixedGuide
from elbokit.report.images import image_grid, write_png
from elbokit.train.checkpoint import CHECKPOINT, STATE, load_checkpoint, load_model_state
from elbokit.train.loop import METRICS, resolve_device

CONFIG = "config.json"
DATASET = "dataset.json"
EVALUATION = "evaluation.json"
#: Files a run consists of: their presence marks a folder as holding a run; --overwrite removes them.
RUN_FILES = (CONFIG, DATASET, METRICS, CHECKPOINT, STATE, EVALUATION, "samples.png", "reconstructions.png",
             "diagnostics.json", "report.html")  # fmt: skip
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


def clear_run(path: Path) -> None:
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / "tmp", ignore_errors=True)


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
    """Read a run's config, data and checkpoint (never unpickling); ValueError for anything missing or wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"run directory {path} does not exist")
    config = RunConfig.load(path / CONFIG)
    checkpoint = load_checkpoint(path)
    data = load_data(config)
    trained_dim = read_description(path).get("data_dim")
    if trained_dim is not None and trained_dim != data.data_dim:
        raise ValueError(f"{config.data} now has dimension {data.data_dim}; the run was trained on {trained_dim}")
    model = build_model(config, data.data_dim)
    load_model_state(model, checkpoint, source=f"{path / CHECKPOINT}")
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
             seed: int = 0, proposal: str = "refined", refine_steps: int = 300) -> Evaluation:  # fmt: skip
    """ELBO (analytic KL where registered) and importance-sampled log p(x) with its standard error on a split.

    ``proposal="refined"`` draws the importance samples from the encoder's q refined per point in the
    full-covariance Gaussian family (``refine_steps`` steps) and mixed defensively with a widened copy
    (:func:`elbokit.diagnostics.refined_proposal`): on a mean-field VAE its weights are far lighter-tailed than
    the encoder's own (see the Pareto k-hat count). ``"encoder"`` uses q(z|x) as it is.
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
        for start in range(0, x_all.shape[0], batch_size):
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
