"""One run's configuration: a dataclass with a comment per field. The CLI maps its flags onto it and a
``--config run.toml`` file supplies the same fields by name; a run directory keeps it as ``config.json``."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from elbokit._config_checks import (
    DEVICE,
    check_extra,
    check_float,
    check_hidden,
    check_int,
    check_str,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

OBJECTIVES = ("elbo", "iwae")
GRADIENTS = {"elbo": ("reparam", "score", "stl"), "iwae": ("reparam", "stl", "dreg", "vimco")}
ACTIVATIONS = ("tanh", "relu", "softplus", "elu", "gelu")
LR_SCHEDULES = ("constant", "burda")
PROPOSALS = ("encoder", "refined")  # log p(x)'s importance-sampling proposal: q(z|x), or q refined per point
GUIDES = "gaussian, full, flow[:K], local or local:full"
AUTO_LIKELIHOOD = "auto"
#: The likelihood "auto" picks for each kind of data (a Dataset's ``support``).
LIKELIHOOD_FOR_SUPPORT = {"binary": "bernoulli", "unit": "bernoulli", "real": "gaussian:learned", "count": "nb"}
DEFAULT_FLOW_TRANSFORMS = 4
MODELS = ("vae", "bnn")
ARCHS = ("mlp", "conv")
#: The networks' defaults for each ``arch`` (hidden widths, activation): conv is Burgess et al. (2018)'s β-VAE.
ARCH_DEFAULTS: dict[str, tuple[tuple[int, ...], str]] = {"mlp": ((200, 200), "tanh"), "conv": ((256, 256), "relu")}
BNN_TASKS = ("auto", "regression", "classification")
#: The bnn-only settings at their defaults (a vae run must leave them so).
BNN_DEFAULTS: dict[str, Any] = {"target": None, "task": "auto", "prior": "normal", "estimator": "local"}
#: The vae-only settings at their defaults (a bnn run must leave them so).
VAE_ONLY: dict[str, Any] = {"objective": "elbo", "gradient": "reparam", "guide": "gaussian", "likelihood": "auto",
                            "binarize": None, "layer": None, "arch": "mlp"}  # fmt: skip


class GuideSpec(NamedTuple):
    """A parsed ``guide`` setting: the guide's kind, its (base's) covariance and the flow's steps (0: none)."""

    kind: Literal["gaussian", "flow", "local"]
    covariance: Literal["diagonal", "full"]
    transforms: int


def parse_guide(text: str) -> GuideSpec:
    """``gaussian`` -> diagonal Gaussian, ``full`` -> full-covariance Gaussian, ``flow[:K]`` -> K IAF steps (K >= 1,
    default 4) on a diagonal Gaussian, ``local`` / ``local:full`` -> no encoder: a diagonal / full-covariance
    Gaussian per training point (non-amortized VI); ValueError (one line) otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"guide must be {GUIDES}, got {text!r}")
    if text == "gaussian":
        return GuideSpec("gaussian", "diagonal", 0)
    if text == "full":
        return GuideSpec("gaussian", "full", 0)
    if text in ("local", "local:diagonal"):
        return GuideSpec("local", "diagonal", 0)
    if text == "local:full":
        return GuideSpec("local", "full", 0)
    name, colon, count = text.partition(":")
    if name == "flow":
        if not colon:
            return GuideSpec("flow", "diagonal", DEFAULT_FLOW_TRANSFORMS)
        if count.isdigit() and int(count) >= 1:
            return GuideSpec("flow", "diagonal", int(count))
        raise ValueError(f"guide flow:K needs an integer K >= 1 (flow steps), got {text!r}")
    raise ValueError(f"guide must be {GUIDES}, got {text!r}")


@dataclass
class RunConfig:
    # -- data --
    data: str = "binarized-mnist"  # dataset name (see `elbokit.data.available()`) or a .npy/.npz/.csv/.h5ad/.mtx file
    layer: str | None = None  # an .h5ad file's layer to read (e.g. "counts") instead of its X
    data_dir: str | None = None  # folder with the dataset's files, where it is not installed
    binarize: str | None = None  # binarized-mnist: "dynamic" (fresh draw each epoch, default) or "fixed"
    limit: int | None = None  # use only the first N training points (quick runs and tests)
    # -- model --
    # "vae": a latent z per data point (the VAE; the settings below up to `guide`); "bnn": a Bayesian neural network,
    # whose latents are its weights, shared by every point (mean-field Gaussian q(w), elbokit.models.bnn.BNN), that
    # predicts `target` from the other columns (regression), or an image dataset's labels (classification)
    model: str = "vae"
    target: str | None = None  # bnn: the column of a CSV file (or table) to predict
    task: str = "auto"  # bnn: "regression", "classification" or "auto" (labelled image data: classification)
    prior: str = "normal"  # bnn: p(w), "normal[:S]" (N(0, S^2), S = 1) or "mixture[:PI,S1,S2]" (Blundell et al. 2015)
    # bnn: how a step draws the weights' effect: "local" (local reparameterization, Kingma et al. 2015), "weights"
    # (one weight draw per minibatch) or "flipout" (Wen et al. 2018)
    estimator: str = "local"
    latent_dim: int = 50  # d, dimension of z
    # the networks: "mlp" (fully connected) or "conv" (images: 4x4 convolutions of stride 2, 32 channels, then the
    # `hidden` layers; the decoder in reverse; Burgess et al. 2018's beta-VAE on 64x64, elbokit.models.conv)
    arch: str = "mlp"
    # encoder hidden sizes (after the convolutions for arch "conv"); the decoder mirrors them. Unset: the arch's
    # default, (200, 200) for mlp and (256, 256) for conv
    hidden: tuple[int, ...] = None  # type: ignore[assignment]  # None until validate() fills in the arch's default
    # between hidden layers: tanh, relu, softplus, elu or gelu. Unset: tanh for mlp, relu for conv
    activation: str = None  # type: ignore[assignment]  # as hidden
    # p(x|z): bernoulli, continuous-bernoulli, gaussian[:SCALE|learned|decoder], laplace[:SCALE|learned|decoder],
    # or "auto": follows the data (values in {0, 1} or [0, 1]: bernoulli; other reals: gaussian:learned), and a run
    # records what it chose
    likelihood: str = "auto"
    # q(z|x): "gaussian" (diagonal), "full" (full covariance) or "flow[:K]" (the diagonal Gaussian pushed through K
    # inverse autoregressive steps conditioned on the encoder's last hidden layer, default K = 4; needs zuko), or
    # "local[:full]": no encoder, a free Gaussian q per training point (non-amortized VI), and for any other point q
    # fitted by maximising its ELBO from the prior (elbokit.NonAmortizedGaussian)
    guide: str = "gaussian"
    # -- objective --
    objective: str = "elbo"  # "elbo" (reconstruction - beta * KL, analytic KL) or "iwae" (IWAE_k bound)
    k: int = 1  # importance samples per point for "iwae"; Monte-Carlo samples per point for "elbo"
    # gradient estimator: "reparam", "score" or "stl" for the elbo; "reparam", "stl", "dreg" or "vimco" for iwae
    gradient: str = "reparam"
    beta: float = 1.0  # target KL weight; the objective is the ELBO only at beta = 1
    anneal: str = "constant"  # constant, linear:N, cyclical:N[:R], freebits:LAMBDA (N in steps, or Nep epochs)
    # -- optimisation --
    epochs: int = 10  # passes over the training set
    batch_size: int = 100  # points per step
    lr: float = 1e-3  # Adam learning rate
    # Adam learning rate of a local guide's per-point q (guide "local"): each point's q takes one step per epoch,
    # so it needs a larger one than the model (on 2000 MNIST digits, 20 epochs: ELBO -203 at 1e-3, -138 at 0.1)
    local_lr: float = 0.1
    # per-epoch factor on lr: "constant", or "burda" (Burda et al. 2016: 8 stages, lr * 10^(-i/7) for 3^i/3280
    # of the epochs in stage i)
    lr_schedule: str = "constant"
    clip: float | None = None  # clip the gradient's global norm to this value (None: no clipping)
    patience: int | None = None  # stop after this many epochs without a better validation bound (None: never)
    seed: int = 0  # seeds parameters, data order, binarization and Monte-Carlo draws
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda[:i]"
    # -- output --
    quiet: bool = False  # no progress bar
    log_every: int | None = None  # also log train bound, β and lr every N steps to steps.jsonl (None: per epoch only)
    tensorboard: bool = False  # also write TensorBoard event files to DIR/tensorboard (needs elbokit[tensorboard])
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept with the run

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field's type and range, and the fields against each other: ValueError (one line) naming
        the field, what it takes and what it got. Numbers given as ints where floats are meant become floats;
        ``hidden`` becomes a tuple. A TOML file, the CLI and Python get the same checks."""
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        hidden, activation = ARCH_DEFAULTS[self.arch]
        if self.hidden is None:
            self.hidden = hidden
        if self.activation is None:
            self.activation = activation
        for name in ("data", "activation", "likelihood", "guide", "objective", "gradient", "anneal", "lr_schedule",
                     "device", "model", "task", "prior", "estimator"):  # fmt: skip
            check_str(name, getattr(self, name))
        for name in ("data_dir", "binarize", "layer", "target"):
            if getattr(self, name) is not None:
                check_str(name, getattr(self, name))
        for name in ("latent_dim", "k", "epochs", "batch_size"):
            check_int(name, getattr(self, name), low=1)
        for name in ("limit", "patience", "log_every"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), low=1)
        check_int("seed", self.seed, low=0)
        if self.seed >= 2**32:  # numpy's range; the per-epoch generators' seeds are derived from it
            raise ValueError(f"seed must be an integer in 0..2**32 - 1, got {self.seed}")
        self.hidden = check_hidden(self.hidden)
        self.beta = check_float("beta", self.beta, low=0.0)
        self.lr = check_float("lr", self.lr, low=0.0, strict=True)
        self.local_lr = check_float("local_lr", self.local_lr, low=0.0, strict=True)
        if self.clip is not None:
            self.clip = check_float("clip", self.clip, low=0.0, strict=True)
        for name in ("quiet", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_extra(self.extra)
        if not self.data.strip():
            raise ValueError("data must name a dataset or a file, got an empty string")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "iwae" and self.k < 2:
            raise ValueError(f"the iwae objective needs k >= 2, got {self.k}")
        allowed = GRADIENTS[self.objective]
        if self.gradient not in allowed:
            choices = ", ".join(allowed)
            raise ValueError(f"the {self.objective} objective takes gradient {choices}, got {self.gradient!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.binarize not in (None, "dynamic", "fixed"):
            raise ValueError(f"binarize must be 'dynamic' or 'fixed', got {self.binarize!r}")
        if not DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be auto, cpu or cuda[:i], got {self.device!r}")
        from elbokit.models.likelihoods import make_likelihood
        from elbokit.train.schedules import parse_schedule

        if self.likelihood != AUTO_LIKELIHOOD:
            make_likelihood(self.likelihood, data_dim=1)
        schedule = parse_schedule(self.anneal)
        if self.objective == "iwae" and (schedule.kind != "constant" or self.beta != 1.0):
            raise ValueError(f"β and annealing apply to the elbo objective; the iwae objective is the IWAE_k bound "
                             f"(got beta {self.beta:g}, anneal {self.anneal!r})")  # fmt: skip
        self._validate_model()
        guide = parse_guide(self.guide)
        if (guide.kind == "flow" or guide.covariance != "diagonal") and schedule.kind == "freebits":
            raise ValueError(f"free bits needs the diagonal Gaussian guide (a KL per dimension), got {self.guide!r}")

    def _validate_model(self) -> None:
        """The model kind and the settings that belong to one kind only."""
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.model == "vae":
            for name, default in BNN_DEFAULTS.items():
                if getattr(self, name) != default:
                    raise ValueError(f"{name} applies to model bnn, got {name} {getattr(self, name)!r} for a vae")
            return
        from elbokit.models.bnn import ESTIMATORS, parse_prior

        if self.task not in BNN_TASKS:
            raise ValueError(f"task must be one of {', '.join(BNN_TASKS)}, got {self.task!r}")
        parse_prior(self.prior)
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        for name, default in VAE_ONLY.items():
            if getattr(self, name) != default:
                raise ValueError(f"{name} applies to model vae; a bnn takes the ELBO over its weights "
                                 f"(got {name} {getattr(self, name)!r})")  # fmt: skip
        from elbokit.train.schedules import parse_schedule

        if parse_schedule(self.anneal).kind == "freebits":
            raise ValueError("free bits needs a KL per latent dimension (a vae); a bnn anneals by linear or cyclical")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> RunConfig:
        """Build from a mapping of field names; an unknown name is an error naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{source}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(names))})")
        try:
            return cls(**values)
        except TypeError as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> dict[str, Any]:
        """The settings in a TOML file (top level, or under a ``[run]`` table), checked by name but not yet
        merged: the CLI lays its explicit flags over them."""
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"config file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"config file {path} is not valid TOML: {err}") from None
        values = values.get("run", values)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"config file {path}: unknown setting {unknown[0]!r}")
        return dict(values)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path.parent} holds no run ({path.name} is missing)") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path} is not valid JSON") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} does not hold a run configuration")
        return cls.from_dict(values, source=str(path))
