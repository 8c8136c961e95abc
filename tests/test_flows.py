"""Flow guides (``ek.AmortizedFlow``, ``ek.LocalFlow`` on zuko): shapes, the one-pass density of a draw, the
score at fixed z, normalisation, the identity at initialisation, the estimators, a 0.999-correlated posterior
reached by LocalFlow, the VAE, the CLI (fit, exact resume, bad input, old runs) and the missing optional extra.

Statistical assertions allow Z standard errors (conftest's seed policy); exact ones are float64 to 1e-10.
"""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

import elbokit as ek
from conftest import Z, stop_requested_after
from elbokit.cli import main
from elbokit.config import GuideSpec, RunConfig, parse_guide
from elbokit.guides import MISSING_ZUKO, FlowDistribution, MissingExtraError
from elbokit.models import VAE, LinearGaussian

pytest.importorskip("zuko")


def _perturb(module: nn.Module, std: float, seed: int) -> None:
    """Random flow weights (the last layers included), so that T is far from the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _amortized(d: int = 3, data_dim: int = 6, transforms: int = 2) -> ek.AmortizedFlow:
    torch.manual_seed(0)
    return ek.AmortizedFlow.mlp(data_dim, d, hidden=(8,), transforms=transforms, hidden_features=(8, 8))


# ---- shapes, gradients, one pass -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["amortized", "amortized-d1", "local", "local-select"])
def test_shapes_batch_and_event(kind: str) -> None:
    x = torch.randn(5, 6)
    if kind.startswith("amortized"):
        d = 1 if kind.endswith("d1") else 3
        q, batch = _amortized(d)(x), 5
    else:
        d, guide = 3, ek.LocalFlow(5, 3, transforms=2, hidden_features=(8, 8))
        q, batch = (guide(x), 5) if kind == "local" else (guide.select(torch.tensor([4, 0])), 2)
    assert isinstance(q, Distribution) and isinstance(q, FlowDistribution) and q.has_rsample
    assert q.batch_shape == (batch,) and q.event_shape == (d,)
    z = q.rsample((7,))
    assert z.shape == (7, batch, d) and q.log_prob(z).shape == (7, batch)
    assert q.sample((2,)).shape == (2, batch, d) and q.location.shape == (batch, d)


def test_rsample_and_log_prob_are_finite_and_differentiable() -> None:
    guide = _amortized()
    _perturb(guide.flow, 0.3, seed=1)
    q = guide(torch.randn(4, 6))
    z = q.rsample((3,))
    log_q = q.log_prob(z)
    assert bool(torch.isfinite(z).all() and torch.isfinite(log_q).all())
    (z.sum() + log_q.sum()).backward()
    for name, p in guide.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    assert all(float(p.grad.abs().sum()) > 0 for p in guide.flow.parameters() if p.grad is not None)


def test_log_prob_of_its_own_draw_takes_one_pass_per_step() -> None:
    """rsample then log_prob of that tensor: one MADE pass per step (K = 2 in all); any other tensor (a clone)
    is inverted, d = 3 sequential passes per step plus one for the log-determinant, to the same value."""
    guide = _amortized(d=3, transforms=2)
    _perturb(guide.flow, 0.3, seed=2)
    calls = []
    for step in guide.flow.steps:
        step.hyper.register_forward_hook(lambda *_: calls.append(1))
    q = guide(torch.randn(4, 6))
    z = q.rsample((5,))
    log_q = q.log_prob(z)
    assert len(calls) == 2
    z2, log_q2 = q.rsample_and_log_prob((5,))
    assert len(calls) == 4 and z2.shape == (5, 4, 3) and log_q2.shape == (5, 4)
    inverted = q.log_prob(z.clone())
    assert len(calls) == 4 + 2 * (3 + 1)
    torch.testing.assert_close(inverted, log_q, rtol=0, atol=1e-10)


def test_log_prob_after_sample_is_the_score_at_fixed_z() -> None:
    """A draw by ``sample()`` is not matched to its path: d/dphi log q(z) there is taken at fixed z (what the
    score-function estimator needs), equal to that of a fresh tensor and unlike the path derivative."""
    guide = ek.LocalFlow(3, 2, transforms=2, hidden_features=(8, 8), covariance="diagonal")
    _perturb(guide.flow, 0.3, seed=3)
    q = guide(torch.zeros(3, 1))
    z = q.sample()
    (score,) = torch.autograd.grad(q.log_prob(z).sum(), guide.base.loc)
    (fresh,) = torch.autograd.grad(q.log_prob(z.clone()).sum(), guide.base.loc)
    torch.testing.assert_close(score, fresh, rtol=0, atol=1e-10)
    z_path = q.rsample()
    (path,) = torch.autograd.grad(q.log_prob(z_path).sum(), guide.base.loc)
    assert float((path - score).abs().max()) > 1e-3  # log q(T(m + s eps)) at fixed eps: another derivative


def test_log_prob_after_sample_without_autograd_is_one_pass() -> None:
    """Without autograd (importance sampling for log p(x)) ``sample()`` remembers log q of its draw: one pass
    per step, the value that inversion gives."""
    guide = _amortized(d=3, transforms=2)
    _perturb(guide.flow, 0.3, seed=2)
    calls = []
    for step in guide.flow.steps:
        step.hyper.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        q = guide(torch.randn(4, 6))
        z = q.sample((5,))
        log_q = q.log_prob(z)
        assert len(calls) == 2
        torch.testing.assert_close(log_q, q.log_prob(z.clone()), rtol=0, atol=1e-10)


# ---- normalisation ------------------------------------------------------------------------------------------
def _two_d_flow() -> FlowDistribution:
    guide = ek.LocalFlow(1, 2, transforms=3, hidden_features=(16, 16), covariance="diagonal")
    _perturb(guide.flow, 0.3, seed=4)
    with torch.no_grad():
        guide.base.loc.copy_(torch.tensor([[0.5, -0.3]]))
    return guide.distribution()


def test_density_integrates_to_one_on_a_grid() -> None:
    """Riemann sum of q over [-15, 15]^2 (600^2 cells; log_prob by inversion): 1 to 1e-3."""
    q = _two_d_flow()
    t = torch.linspace(-15.0, 15.0, 600)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 1, 2)  # (G, 1, 2)
    with torch.no_grad():
        total = q.log_prob(grid).exp().sum() * (t[1] - t[0]) ** 2
    assert abs(float(total) - 1) < 1e-3, float(total)


def test_importance_identity_under_q() -> None:
    """E_q[p(z) / q(z)] = 1 for a normalised p: p = N(c, 0.1^2 I) at q's densest draw, so the ratio is bounded;
    log q is the one remembered with each draw. Within Z standard errors."""
    q = _two_d_flow()
    with torch.no_grad():
        z, log_q = q.rsample_and_log_prob((50_000,))  # (S, 1, 2), (S, 1)
        centre = z.reshape(-1, 2)[log_q.argmax()]
        p = Independent(Normal(centre, 0.1), 1)
        w = (p.log_prob(z) - log_q).exp().reshape(-1)
    mean, se = float(w.mean()), float(w.std() / math.sqrt(w.numel()))
    assert abs(mean - 1) < Z * se, (mean, se)


# ---- initialisation -----------------------------------------------------------------------------------------
def test_fresh_amortized_flow_is_its_base_gaussian() -> None:
    guide = _amortized()
    x = torch.randn(4, 6)
    q, (base, _) = guide(x), guide.base(x)
    torch.manual_seed(7)
    z = q.rsample((6,))
    torch.manual_seed(7)
    torch.testing.assert_close(z, base.rsample((6,)), rtol=0, atol=1e-12)
    torch.testing.assert_close(q.log_prob(z.clone()), base.log_prob(z), rtol=0, atol=1e-12)
    torch.testing.assert_close(q.location, base.mean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", ["diagonal", "full"])
def test_local_flow_starts_at_the_gaussian_it_is_built_from(family: str) -> None:
    gen = torch.Generator().manual_seed(5)
    loc = torch.randn(4, 3, generator=gen)
    if family == "diagonal":
        q: Distribution = Independent(Normal(loc, 0.5 + torch.rand(4, 3, generator=gen)), 1)
    else:
        a = torch.randn(4, 3, 3, generator=gen)
        q = MultivariateNormal(loc, covariance_matrix=a @ a.mT + 0.1 * torch.eye(3))
    for covariance in ("full", "diagonal"):
        if family == "full" and covariance == "diagonal":
            with pytest.raises(ValueError, match="covariance='full'"):
                ek.LocalFlow.from_distribution(q, covariance=covariance)
            continue
        guide = ek.LocalFlow.from_distribution(q, transforms=2, covariance=covariance)
        z = q.sample((5,))
        torch.testing.assert_close(guide(loc).log_prob(z), q.log_prob(z), rtol=0, atol=1e-10)
        torch.testing.assert_close(guide.select(torch.tensor([2])).log_prob(z[:, 2:3]), q.log_prob(z)[:, 2:3])


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="transforms must be an integer >= 1, got 0"):
        ek.AmortizedFlow.mlp(6, 3, transforms=0)
    with pytest.raises(ValueError, match="latent_dim"):
        ek.AmortizedFlow.mlp(6, 0)
    with pytest.raises(ValueError, match="context must be an integer >= 1"):
        ek.LocalFlow(3, 2, context=0)
    with pytest.raises(ValueError, match="holds 3 data points"):
        ek.LocalFlow(3, 2)(torch.zeros(4, 1))
    with pytest.raises(ValueError, match="covariance must be 'diagonal'"):
        VAE.mlp(6, 2, guide="flow", covariance="full")


# ---- the estimators and the correlated posterior ------------------------------------------------------------
def test_elbo_and_iwae_run_with_both_flow_guides(make_model: Callable[..., LinearGaussian]) -> None:
    model = make_model(11)
    x = model.sample(4, generator=torch.Generator().manual_seed(2)).x
    log_px = model.log_evidence(x)
    torch.manual_seed(0)
    amortized = ek.AmortizedFlow.mlp(5, 2, hidden=(8,), transforms=2, hidden_features=(8, 8))
    for guide in (amortized, ek.LocalFlow.from_distribution(model.posterior(x), transforms=2)):
        b = ek.elbo(model, guide, x, samples=3)
        assert b.kl_method == "mc" and b.value.shape == (4,) and bool(torch.isfinite(b.value).all())
        b.loss.backward()
        w = ek.iwae(model, guide, x, k=5)
        w.loss.backward()
        assert w.value.shape == (4,) and bool(torch.isfinite(w.value).all())
        assert all(p.grad is not None for p in guide.parameters())
    # Started at the exact posterior, every log w equals log p(x) (the flow is the identity).
    exact = ek.LocalFlow.from_distribution(model.posterior(x), transforms=2)
    torch.testing.assert_close(ek.iwae(model, exact, x, k=7).value, log_px, rtol=0, atol=1e-10)


def _correlated_linear_gaussian() -> tuple[LinearGaussian, Tensor]:
    """A 3-d latent, 5-d data model whose first two loading columns are nearly collinear: the posterior
    correlation of (z_1, z_2) is -0.9991."""
    gen = torch.Generator().manual_seed(0)
    v, w3 = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
    weight = torch.stack([15 * v, 15 * v + 0.1 * torch.randn(5, generator=gen), w3], 1)  # (5, 3)
    model = LinearGaussian(weight, torch.zeros(5), 1.0)
    return model, model.sample(2, generator=gen).x


def test_local_flow_reaches_a_correlated_posterior() -> None:
    """From the best mean-field Gaussian (3.2 nats short of log p(x)), Adam on the reparameterised ELBO (64
    draws, 1,500 steps; lr 0.1 on the base, 0.01 on the flow and embeddings, both decaying 100-fold) brings a
    LocalFlow (K = 2) within 0.02 nats of log p(x), the ELBO estimated to a standard error below 0.002."""
    model, x = _correlated_linear_gaussian()
    posterior = model.posterior(x)
    cov = posterior.covariance_matrix[0].detach()
    assert float(cov[0, 1] / (cov[0, 0] * cov[1, 1]).sqrt()) < -0.999
    mean_field = Independent(Normal(posterior.loc, model.posterior_precision().diagonal().rsqrt().expand(2, 3)), 1)
    log_px = model.log_evidence(x)
    assert bool((log_px - model.exact_elbo(x, mean_field) > 3).all())
    guide = ek.LocalFlow.from_distribution(mean_field, transforms=2, hidden_features=(8, 8))
    steps = 1500
    optimizer = torch.optim.Adam([
        {"params": guide.base.parameters(), "lr": 0.1},
        {"params": [guide.embedding, *guide.flow.parameters()], "lr": 0.01},
    ])  # fmt: skip
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.01 ** (i / steps))
    for _ in range(steps):
        loss = ek.elbo(model, guide, x, samples=64).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        repeats = torch.stack([ek.elbo(model, guide, x, samples=2000).value for _ in range(10)])  # (10, B)
    gap = log_px - repeats.mean(0)
    se = repeats.std(0) / math.sqrt(10)
    assert bool((se < 0.002).all()), se
    assert bool((gap < 0.02).all()), gap


# ---- the VAE ------------------------------------------------------------------------------------------------
def test_vae_with_a_flow_guide_reconstructs_and_interpolates() -> None:
    """encode(x) is the base mean pushed through the flow (the base mean itself while the flow is the identity)."""
    torch.manual_seed(0)
    vae = VAE.mlp(6, 2, hidden=(8,), guide="flow", transforms=2)
    assert isinstance(vae.encoder, ek.AmortizedFlow) and vae.encoder.transforms == 2
    x = torch.rand(5, 6).bernoulli()
    torch.testing.assert_close(vae.encode(x), vae.encoder.base(x)[0].mean)
    _perturb(vae.encoder.flow, 0.3, seed=6)
    torch.testing.assert_close(vae.encode(x), vae.encoder(x).location)
    assert vae.reconstruct(x).shape == (5, 6) and vae.interpolate(x[0], x[1], steps=4).shape == (4, 6)
    b = ek.elbo(vae, vae.encoder, x)
    assert b.kl_method == "mc" and bool(torch.isfinite(b.value).all())


# ---- the missing optional extra -----------------------------------------------------------------------------
@contextmanager
def _without_zuko(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [name for name in sys.modules if name == "zuko" or name.startswith("zuko.")]:
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    yield


def test_missing_zuko_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _without_zuko(monkeypatch):
        with pytest.raises(MissingExtraError, match=r"pip install 'elbokit\[flows\]'") as raised:
            ek.AmortizedFlow.mlp(6, 2)
        assert isinstance(raised.value, ImportError) and str(raised.value) == MISSING_ZUKO
        status = main(["fit", "--data", "digits", "--limit", "40", "--guide", "flow", "--out", str(tmp_path / "r"),
                       "--quiet", "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and err.strip() == f"elbokit: error: {MISSING_ZUKO}"
    assert not (tmp_path / "r").exists()


def test_zuko_is_imported_only_where_a_flow_is_built() -> None:
    """One module names zuko (guides/_iaf.py, inside functions), and ``import elbokit`` leaves it unimported."""
    src = Path(__file__).resolve().parents[1] / "src" / "elbokit"
    importers = set()
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [module or ""]
            if isinstance(node, (ast.Import, ast.ImportFrom)) and any(n.split(".")[0] == "zuko" for n in names):
                importers.add(path.relative_to(src).as_posix())
    assert importers == {"guides/_iaf.py"}
    code = "import sys, elbokit, elbokit.guides; assert not any(m.split('.')[0] == 'zuko' for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- the CLI ------------------------------------------------------------------------------------------------
FIT = ["--data", "digits", "--limit", "120", "--epochs", "2", "--batch-size", "16", "--latent-dim", "3",
       "--hidden", "16", "--quiet", "--device", "cpu"]  # fmt: skip


def _tensors(run: Path) -> dict[str, Tensor]:
    return {k: v for k, v in load_file(run / "checkpoint.safetensors").items() if not k.startswith("rng.")}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def test_cli_fit_with_a_flow_guide_resumes_bit_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--guide flow:2``: stopped by a "signal" after step 10 (8 steps per epoch), then resumed with
    ``--resume``, the run ends with the parameters and optimizer state of an uninterrupted one, bit for bit."""
    assert main(["fit", *FIT, "--guide", "flow:2", "--out", str(tmp_path / "straight")]) == 0
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["guide"] == "flow:2"
    run = tmp_path / "stopped"
    with stop_requested_after(10):
        assert main(["fit", *FIT, "--guide", "flow:2", "--out", str(run)]) == 130
    assert "resume with" in capsys.readouterr().err
    assert json.loads((run / "state.json").read_text())["step"] == 10
    torch.manual_seed(999)
    assert main(["fit", "--out", str(run), "--resume", "--quiet"]) == 0
    straight, resumed = _tensors(tmp_path / "straight"), _tensors(run)
    assert straight.keys() == resumed.keys() and any(".flow.steps.1." in name for name in straight)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


@pytest.mark.parametrize(
    ("guide", "needle"),
    [
        ("flow:0", "guide flow:K needs an integer K >= 1 (flow steps), got 'flow:0'"),
        ("flow:x", "guide flow:K needs an integer K >= 1 (flow steps), got 'flow:x'"),
        ("flow:", "got 'flow:'"),
        ("nonsense", "guide must be gaussian, full, flow[:K], local or local:full, got 'nonsense'"),
        ("Flow", "got 'Flow'"),
    ],
)
def test_a_bad_guide_is_refused_in_one_line(
    guide: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["fit", *FIT, "--guide", guide, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("elbokit: error: ") and needle in err and "Traceback" not in err
    assert not out.exists()


@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "gaussian"
    assert main(["fit", *FIT, "--epochs", "1", "--out", str(run)]) == 0
    return run


def test_a_bad_guide_in_config_json_is_refused(
    gaussian_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name, content in _snapshot(gaussian_run).items():
        (run / name).write_bytes(content)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "guide": "flow:-1"}))
    before = _snapshot(run)
    for argv in (["evaluate", str(run), "--k", "5"], ["fit", "--out", str(run), "--resume"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "guide flow:K needs an integer K >= 1 (flow steps), got 'flow:-1'" in err
        assert _snapshot(run) == before


def test_a_run_without_a_guide_field_opens_as_gaussian(
    gaussian_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """config.json written before the guide setting existed: the diagonal Gaussian guide, as then."""
    run = tmp_path / "old"
    run.mkdir()
    for name, content in _snapshot(gaussian_run).items():
        (run / name).write_bytes(content)
    config = json.loads((run / "config.json").read_text())
    assert config.pop("guide") == "gaussian"
    (run / "config.json").write_text(json.dumps(config))
    assert RunConfig.load(run / "config.json").guide == "gaussian"
    assert main(["evaluate", str(run), "--k", "5", "--limit", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [("gaussian", ("gaussian", "diagonal", 0)), ("full", ("gaussian", "full", 0)),
     ("flow", ("flow", "diagonal", 4)), ("flow:2", ("flow", "diagonal", 2))],
)  # fmt: skip
def test_guide_settings_parse(text: str, expected: tuple[str, str, int]) -> None:
    assert parse_guide(text) == GuideSpec(*expected)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="free bits needs the diagonal Gaussian guide"):
        RunConfig(guide="flow:2", anneal="freebits:0.5")


def test_building_a_flow_keeps_torch_argument_checks_on() -> None:
    """zuko switches torch.distributions' argument checks off when imported; a flow guide built in a fresh
    process leaves them on, so NaN data is still refused."""
    code = (
        "import torch, elbokit as ek\n"
        "from torch.distributions import Distribution\n"
        "assert Distribution._validate_args\n"
        "guide = ek.AmortizedFlow.mlp(4, 2, hidden=(8,), transforms=1)\n"
        "assert Distribution._validate_args, 'argument checks switched off'\n"
        "from elbokit.models import LinearGaussian\n"
        "model = LinearGaussian(torch.randn(4, 2), torch.zeros(4), 1.0)\n"
        "x = torch.full((3, 4), float('nan'))\n"
        "try:\n"
        "    ek.elbo(model, guide, x)\n"
        "except ValueError as err:\n"
        "    assert 'finite' in str(err), err\n"
        "else:\n"
        "    raise AssertionError('NaN data accepted')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
