r"""Disentanglement: how the latent codes line up with known generative factors.

Each metric takes codes ``z`` (N, d), e.g. the means of q(z|x), and integer ground-truth factors ``factors``
(N, F) of the same points.

.. math::
    \mathrm{MIG} = \frac1F \sum_k \frac{I(z_{j^{(k)}}; v_k) - \max_{j \ne j^{(k)}} I(z_j; v_k)}{H(v_k)}, \qquad
    D = \sum_j \rho_j \bigl(1 - H_F(P_{j\cdot})\bigr), \qquad
    \text{FactorVAE} = \Pr\bigl[\hat k(\arg\min_j \widehat{\operatorname{Var}}_{k\,\mathrm{fixed}}
    (z_j / s_j)) = k\bigr]

* :func:`mig`: the mutual information gap of Chen et al. (2018), with I(z_j; v_k) estimated on a histogram of
  each latent (equal-width bins over its range, as in disentanglement_lib).
* :func:`dci`: disentanglement, completeness and informativeness of Eastwood & Williams (2018), from the
  feature importances of one scikit-learn predictor per factor.
* :func:`factor_vae_score`: the majority-vote score of Kim & Mnih (2018), with batches that share a factor value
  drawn from the given pool of codes instead of generated afresh.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor


class MIG(NamedTuple):
    """The mutual information gap.

    Attributes:
        value: the mean of ``per_factor`` over the factors that take more than one value (higher is better).
        per_factor: (F,) the normalised gap (I_top - I_second) / H(v_k); nan for a factor with a single value.
        mutual_information: (d, F) the histogram estimate of I(z_j; v_k), in nats.
        entropy: (F,) H(v_k), in nats.
        skipped: the number of factors that take a single value (H = 0), left out of ``value``.
    """

    value: float
    per_factor: Tensor
    mutual_information: Tensor
    entropy: Tensor
    skipped: int


class DCI(NamedTuple):
    """Disentanglement, completeness and informativeness.

    Attributes:
        disentanglement: Σ_j ρ_j (1 - H_F(P_j·)), in [0, 1] (higher is better).
        completeness: the mean over factors of 1 - H_d(P̃_·k), in [0, 1].
        informativeness: the mean over factors of the predictors' accuracy on the held-out points.
        informativeness_train: the same on the training points.
        importance: (d, F) R_jk, the importance of latent j for predicting factor k (each column sums to 1,
            or is 0 for a factor that takes a single value).
        disentanglement_per_latent: (d,) 1 - H_F(P_j·).
        completeness_per_factor: (F,) 1 - H_d(P̃_·k); nan for a factor that takes a single value.
        skipped: the number of factors that take a single value, left out of completeness and informativeness.
    """

    disentanglement: float
    completeness: float
    informativeness: float
    informativeness_train: float
    importance: Tensor
    disentanglement_per_latent: Tensor
    completeness_per_factor: Tensor
    skipped: int


class FactorVAEScore(NamedTuple):
    """The FactorVAE majority-vote score.

    Attributes:
        value: the majority-vote classifier's accuracy on the held-out votes (chance is 1 / F).
        train_accuracy: its accuracy on the votes it was built from.
        active_dims: the latent dimensions kept (std over the pool >= ``prune`` times the largest std).
    """

    value: float
    train_accuracy: float
    active_dims: list[int]


def _check(z: Tensor, factors: Tensor) -> None:
    """One-line ValueErrors for codes and factors that the metrics cannot use."""
    if not isinstance(z, Tensor) or z.dim() != 2 or not z.is_floating_point():
        raise ValueError(f"z must be a floating-point tensor of shape (N, d), got {_describe(z)}")
    if not isinstance(factors, Tensor) or factors.dim() != 2 or factors.is_floating_point() or factors.is_complex():
        raise ValueError(f"factors must be an integer tensor of shape (N, F), got {_describe(factors)}")
    if z.shape[0] != factors.shape[0]:
        raise ValueError(
            f"z and factors must have the same number of points N, got {z.shape[0]} and {factors.shape[0]}"
        )
    if z.shape[0] < 2:
        raise ValueError(f"need at least 2 points, got N = {z.shape[0]}")
    if z.shape[1] < 1 or factors.shape[1] < 1:
        raise ValueError(
            f"need at least one latent and one factor, got z {tuple(z.shape)}, factors {tuple(factors.shape)}"
        )
    if not bool(torch.isfinite(z).all()):
        raise ValueError("z must be finite, got NaN or inf")
    if bool((factors < 0).any()):
        raise ValueError(f"factors must be non-negative integers, got a minimum of {int(factors.min())}")


def _describe(x: object) -> str:
    return f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def _dense_codes(factors: Tensor) -> tuple[Tensor, Tensor]:
    """Each factor's values relabelled 0..V_k - 1 in increasing order: (N, F) codes and (F,) V_k."""
    columns = [torch.unique(f, return_inverse=True) for f in factors.T]
    codes = torch.stack([inverse for _, inverse in columns], dim=1)  # (N, F)
    n_values = torch.tensor([len(values) for values, _ in columns])  # (F,)
    return codes, n_values


def histogram_discretize(z: Tensor, *, bins: int = 20) -> Tensor:
    r"""Each latent's bin index among ``bins`` equal-width bins over its range [min_n z_nj, max_n z_nj].

    Bin b holds :math:`e_b \le z < e_{b+1}` with :math:`e_b = \min + b (\max - \min) / B`, the maximum in the
    last bin (numpy's ``digitize`` on ``histogram``'s edges, as disentanglement_lib discretises). A constant
    latent falls in bin 0.

    Args:
        z: (N, d) codes.
        bins: B, the number of bins per latent.

    Returns:
        (N, d) int64 bin indices in 0..B - 1.
    """
    z = z.detach().to(torch.float64)
    low, high = z.min(0).values, z.max(0).values  # (d,)
    step = (high - low) / bins
    edges = torch.arange(1, bins, dtype=torch.float64).unsqueeze(0) * step.unsqueeze(1) + low.unsqueeze(1)  # (d, B-1)
    return torch.searchsorted(edges, z.T.contiguous(), right=True).T  # (N, d): the number of inner edges <= z


def _entropy(counts: Tensor, dim: int) -> Tensor:
    """H = -Σ p log p in nats of the histogram ``counts`` along ``dim`` (empty cells contribute 0)."""
    p = counts / counts.sum(dim, keepdim=True)
    return -torch.special.xlogy(p, p).sum(dim)


def mig(z: Tensor, factors: Tensor, *, bins: int = 20) -> MIG:
    r"""The mutual information gap (Chen et al. 2018), by histogram estimates of I(z_j; v_k).

    .. math::
        \mathrm{MIG} = \frac1F \sum_k \frac{I(z_{j^{(k)}}; v_k) - \max_{j \ne j^{(k)}} I(z_j; v_k)}{H(v_k)},
        \qquad j^{(k)} = \arg\max_j I(z_j; v_k),

    with :math:`I(a; v) = \sum_{a,v} \hat p(a, v) \log \frac{\hat p(a, v)}{\hat p(a) \hat p(v)}` on the joint
    histogram of z_j's bin (:func:`histogram_discretize`) and the factor's value. Chen et al. estimate I from
    q(z|x) itself; the histogram estimate is disentanglement_lib's, usable on codes alone. It is biased up by
    about (B - 1)(V_k - 1) / (2N) nats (Miller 1955), which sets MIG's floor for codes that carry no
    information. Factors that take a single value (H(v_k) = 0) are left out and counted in ``skipped``.

    Args:
        z: (N, d) codes, d >= 2.
        factors: (N, F) non-negative integer factors.
        bins: B, the number of equal-width bins per latent.

    Returns:
        MIG.

    References:
        Chen, Li, Grosse & Duvenaud, "Isolating sources of disentanglement in variational autoencoders",
        NeurIPS 2018.
        Locatello et al., "Challenging common assumptions in the unsupervised learning of disentangled
        representations", ICML 2019 (disentanglement_lib).
    """
    _check(z, factors)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    n, d = z.shape
    if d < 2:
        raise ValueError(f"MIG needs at least 2 latent dimensions for a gap, got z of shape {tuple(z.shape)}")
    f = factors.shape[1]
    codes, n_values = _dense_codes(factors.cpu())  # (N, F), (F,)
    constant = n_values == 1
    if bool(constant.all()):
        raise ValueError(f"every factor takes a single value, so MIG is undefined (F = {f})")
    a = histogram_discretize(z.cpu(), bins=bins)  # (N, d)
    v_max = int(n_values.max())
    # one bincount over every (latent j, factor k, bin a, value v) cell, from N d F int64 indices
    cell = (torch.arange(d).view(1, d, 1) * f + torch.arange(f).view(1, 1, f)) * bins + a.unsqueeze(2)  # (N, d, F)
    cell = cell * v_max + codes.unsqueeze(1)
    joint = torch.bincount(cell.reshape(-1), minlength=d * f * bins * v_max)
    joint = joint.view(d, f, bins, v_max).to(torch.float64) / n  # p(a, v) per (j, k)
    p_a = joint.sum(3, keepdim=True)  # (d, F, B, 1)
    p_v = joint.sum(2, keepdim=True)  # (d, F, 1, V)
    ratio = joint / (p_a * p_v)
    mutual_information = torch.where(joint > 0, joint * torch.log(ratio), 0.0).sum((2, 3))  # (d, F)
    entropy = _entropy(joint[0].sum(1), dim=1)  # (F,) from the factor marginals
    top2 = mutual_information.topk(2, dim=0).values  # (2, F)
    per_factor = torch.where(constant, math.nan, (top2[0] - top2[1]) / torch.where(constant, 1.0, entropy))
    return MIG(
        value=float(per_factor[~constant].mean()),
        per_factor=per_factor,
        mutual_information=mutual_information,
        entropy=entropy,
        skipped=int(constant.sum()),
    )


def dci_scores(importance: Tensor) -> tuple[Tensor, Tensor, float, float]:
    r"""Disentanglement and completeness from an importance matrix (Eastwood & Williams 2018).

    .. math::
        P_{jk} = \frac{R_{jk}}{\sum_{k'} R_{jk'}}, \quad D_j = 1 - H_F(P_{j\cdot}), \quad
        \rho_j = \frac{\sum_k R_{jk}}{\sum_{jk} R_{jk}}, \quad D = \sum_j \rho_j D_j;
        \qquad \tilde P_{jk} = \frac{R_{jk}}{\sum_{j'} R_{j'k}}, \quad C_k = 1 - H_d(\tilde P_{\cdot k}),
        \quad C = \frac1{F'} \sum_k C_k,

    entropies in base F and d (so each term is in [0, 1]), :math:`0 \log 0 = 0`. A latent with no importance
    has ρ_j = 0 and D_j = 0; a factor whose column is all zero (it takes a single value) has C_k = nan and is
    left out of C's mean (F' counts the others). With a single factor every D_j is 1, and with a single latent
    every C_k is 1 (an entropy in base 1 is taken as 0).

    Args:
        importance: (d, F) non-negative R.

    Returns:
        (D_j (d,), C_k (F,), D, C).

    References:
        Eastwood & Williams, "A framework for the quantitative evaluation of disentangled representations",
        ICLR 2018.
    """
    if importance.dim() != 2 or importance.shape[0] < 1 or importance.shape[1] < 1:
        raise ValueError(f"importance must have shape (d, F), got {tuple(importance.shape)}")
    r = importance.detach().to(torch.float64)
    if not bool(torch.isfinite(r).all()) or bool((r < 0).any()) or not bool(r.sum() > 0):
        raise ValueError("importance must be finite and non-negative with a positive sum")
    d, f = r.shape
    row, col = r.sum(1), r.sum(0)  # (d,), (F,)
    # entropies in base F and d; a zero row/column gets the uniform P (entropy 1), which its zero weight hides
    h_row = _entropy(torch.where(row.unsqueeze(1) > 0, r, 1.0), dim=1) / math.log(f) if f > 1 else torch.zeros(d)
    h_col = _entropy(torch.where(col > 0, r, 1.0), dim=0) / math.log(d) if d > 1 else torch.zeros(f)
    d_j = torch.where(row > 0, 1.0 - h_row, 0.0).to(torch.float64)
    c_k = torch.where(col > 0, 1.0 - h_col, math.nan).to(torch.float64)
    rho = row / row.sum()
    return d_j, c_k, float((rho * d_j).sum()), float(c_k[col > 0].mean())


def _importance_and_accuracy(
    z: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, regressor: str, seed: int
) -> tuple[np.ndarray, float, float]:
    """One predictor of the factor y from z: the (d,) importances (summing to 1), train and test accuracy."""
    if regressor == "forest":
        from sklearn.ensemble import RandomForestClassifier

        model: Any = RandomForestClassifier(
            n_estimators=10, max_features=None, min_samples_leaf=5, random_state=seed, n_jobs=1
        )
        model.fit(z[train], y[train])
        weight = model.feature_importances_
    else:
        import sklearn
        from sklearn.linear_model import LogisticRegression

        major, minor = (int(part) for part in sklearn.__version__.split(".")[:2])
        penalty: dict[str, Any] = {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}
        model = LogisticRegression(C=0.1, solver="saga", max_iter=500, tol=1e-3, random_state=seed, **penalty)
        model.fit(z[train], y[train])
        weight = np.abs(model.coef_).sum(0)  # Σ over classes of |w_ck|
    total = weight.sum()
    weight = weight / total if total > 0 else np.full(z.shape[1], 1.0 / z.shape[1])
    return weight, float(model.score(z[train], y[train])), float(model.score(z[test], y[test]))


def dci(
    z: Tensor,
    factors: Tensor,
    *,
    train_fraction: float = 0.8,
    seed: int = 0,
    regressor: Literal["forest", "lasso"] = "forest",
) -> DCI:
    r"""Disentanglement, completeness and informativeness (Eastwood & Williams 2018).

    One classifier per factor predicts v_k from z on a random ``train_fraction`` of the points; its feature
    importances give column k of R, and :func:`dci_scores` turns R into D and C:

    .. math::
        D = \sum_j \rho_j \bigl(1 - H_F(P_{j\cdot})\bigr), \qquad
        C = \frac1F \sum_k \bigl(1 - H_d(\tilde P_{\cdot k})\bigr), \qquad
        I = \frac1F \sum_k \mathrm{accuracy}_k(\text{held-out points}).

    The predictors (scikit-learn, imported here):

    * ``"forest"`` (default): ``RandomForestClassifier`` with 10 trees (leaves of >= 5 points) that consider
      every latent at every split, R from the impurity (Gini) importances: about 0.2 s a factor for 4000
      points. Eastwood & Williams use a random forest among their regressors; disentanglement_lib's
      gradient-boosted trees give the same kind of impurity importances but fit trees one after another (one
      per class per round), far slower for many classes. Considering every latent at each split keeps
      importance off latents that a split only took because the informative one was not offered.
    * ``"lasso"``: L1-penalised multinomial logistic regression (C = 0.1, SAGA) on the codes standardised by
      their training mean and std, R from Σ_c |w_ck|: the classification analogue of the paper's LASSO.
      Linear in z: a factor that is a non-monotone function of a latent is under-credited.

    Each factor's importances are normalised to sum to 1 (as the impurity importances are), so every factor
    weighs the same in ρ. Factors that take a single value are left out (a zero column of R).

    Args:
        z: (N, d) codes.
        factors: (N, F) non-negative integer factors.
        train_fraction: the share of points the predictors are fitted on, in (0, 1); the rest measure I.
        seed: seeds the split and the predictors.
        regressor: ``"forest"`` or ``"lasso"``.

    Returns:
        DCI.

    References:
        Eastwood & Williams, "A framework for the quantitative evaluation of disentangled representations",
        ICLR 2018.
        Locatello et al., "Challenging common assumptions in the unsupervised learning of disentangled
        representations", ICML 2019 (disentanglement_lib).
    """
    _check(z, factors)
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if regressor not in ("forest", "lasso"):
        raise ValueError(f"regressor must be 'forest' or 'lasso', got {regressor!r}")
    n, d = z.shape
    n_train = round(train_fraction * n)
    if not 1 <= n_train < n:
        raise ValueError(f"train_fraction {train_fraction} of N = {n} points leaves an empty train or test set")
    try:
        import sklearn  # noqa: F401
    except ImportError as error:
        raise ImportError("dci needs scikit-learn: pip install 'elbokit[disentanglement]'") from error
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    train, test = order[:n_train], order[n_train:]
    x = z.detach().to(torch.float64).cpu().numpy()
    if regressor == "lasso":
        mean, std = x[train].mean(0), x[train].std(0)
        x = (x - mean) / np.where(std > 0, std, 1.0)
    y = factors.cpu().numpy()
    f = y.shape[1]
    importance = np.zeros((d, f))
    train_accuracy, test_accuracy = [], []
    for k in range(f):
        if len(np.unique(y[:, k])) == 1:
            continue
        if len(np.unique(y[train, k])) == 1:
            raise ValueError(f"factor {k} takes a single value on the training points; raise train_fraction")
        importance[:, k], train_k, test_k = _importance_and_accuracy(x, y[:, k], train, test, regressor, seed)
        train_accuracy.append(train_k)
        test_accuracy.append(test_k)
    if not test_accuracy:
        raise ValueError(f"every factor takes a single value, so DCI is undefined (F = {f})")
    r = torch.from_numpy(importance)
    d_j, c_k, disentanglement, completeness = dci_scores(r)
    return DCI(
        disentanglement=disentanglement,
        completeness=completeness,
        informativeness=float(np.mean(test_accuracy)),
        informativeness_train=float(np.mean(train_accuracy)),
        importance=r,
        disentanglement_per_latent=d_j,
        completeness_per_factor=c_k,
        skipped=f - len(test_accuracy),
    )


def factor_vae_score(
    z: Tensor,
    factors: Tensor,
    *,
    votes: int = 800,
    batch: int = 64,
    prune: float = 1e-2,
    seed: int = 0,
) -> FactorVAEScore:
    r"""The FactorVAE disentanglement score (Kim & Mnih 2018), on a pool of encoded points.

    Each vote fixes one factor k (uniformly among the factors that take more than one value) at the value of a
    uniformly drawn pool point, draws ``batch`` pool points with that value (with replacement), scales each
    latent by its std s_j over the whole pool and records

    .. math::
        \hat\jmath = \arg\min_{j\ \mathrm{active}} \widehat{\operatorname{Var}}_{\mathrm{batch}}(z_j / s_j),
        \qquad \hat k(j) = \arg\max_k \#\{\text{training votes } (j, k)\},

    the majority-vote classifier built from the first half of the votes; the score is its accuracy on the
    second half. The paper generates each batch afresh from the simulator; here the pool's points with the
    fixed value stand in for those draws, so the pool should cover each factor value with many points.
    The paper prunes collapsed latents by their KL; with codes only, a latent counts as collapsed when its std
    over the pool is below ``prune`` times the largest std.

    Args:
        z: (N, d) codes.
        factors: (N, F) non-negative integer factors.
        votes: the number of votes, >= 2; the first half builds the classifier, the second half scores it.
        batch: points per vote, >= 2.
        prune: a latent is active when its std over the pool is >= ``prune`` times the largest std.
        seed: seeds the votes.

    Returns:
        FactorVAEScore.

    References:
        Kim & Mnih, "Disentangling by factorising", ICML 2018.
    """
    _check(z, factors)
    for name, value in (("votes", votes), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an int >= 2, got {value!r}")
    if not 0.0 <= prune < 1.0:
        raise ValueError(f"prune must be in [0, 1), got {prune}")
    z = z.detach().to(torch.float64).cpu()
    factors = factors.cpu()
    n, _ = z.shape
    scale = z.std(0, correction=0)  # (d,)
    if not bool(scale.max() > 0):
        raise ValueError("z is constant over the pool, so no latent is active")
    active = torch.nonzero(scale >= prune * scale.max()).squeeze(1)  # (d',)
    z_scaled = z[:, active] / scale[active]  # (N, d')
    codes, n_values = _dense_codes(factors)  # (N, F), (F,)
    varying = torch.nonzero(n_values > 1).squeeze(1)
    if len(varying) == 0:
        raise ValueError(f"every factor takes a single value, so the score is undefined (F = {factors.shape[1]})")
    generator = torch.Generator().manual_seed(seed)
    k = varying[torch.randint(len(varying), (votes,), generator=generator)]  # (votes,)
    anchor = torch.randint(n, (votes,), generator=generator)
    u = torch.rand(votes, batch, generator=generator, dtype=torch.float64)
    members = torch.empty(votes, batch, dtype=torch.long)
    for factor in varying.tolist():
        # pool points sorted by the factor's value: the points with value v are a contiguous block
        order = torch.argsort(codes[:, factor], stable=True)
        counts = torch.bincount(codes[:, factor], minlength=int(n_values[factor]))
        starts = torch.cumsum(counts, 0) - counts
        at = k == factor
        fixed = codes[anchor[at], factor]  # the value each of these votes holds the factor at
        size = counts[fixed].unsqueeze(1)
        offset = (u[at] * size).long().clamp(max=size - 1)  # uniform over the block, with replacement
        members[at] = order[starts[fixed].unsqueeze(1) + offset]
    variance = z_scaled[members].var(1)  # (votes, d')
    argmin = variance.argmin(1)  # (votes,) index into the active latents
    n_train = votes // 2
    f = factors.shape[1]
    table = torch.zeros(len(active), f, dtype=torch.long)
    table.index_put_((argmin[:n_train], k[:n_train]), torch.ones(n_train, dtype=torch.long), accumulate=True)
    classifier = table.argmax(1)  # (d',) the majority factor of each active latent
    train_accuracy = float(table.max(1).values.sum()) / n_train
    test_accuracy = float((classifier[argmin[n_train:]] == k[n_train:]).double().mean())
    return FactorVAEScore(value=test_accuracy, train_accuracy=train_accuracy, active_dims=active.tolist())
