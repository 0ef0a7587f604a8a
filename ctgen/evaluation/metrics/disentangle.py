"""Disentanglement of a latent code against known factors: MIG, β-VAE, FactorVAE, DCI and SAP.

Every function takes ``latents`` float (N, L) (usually the encoder's ``mu``) and ``factors`` float
(N, K) (the ground-truth factor values of the same N images, e.g. a phantom's factors.csv) and
returns a JSON-ready dict (Python floats, lists). Factors with a single value are dropped (they
vary nothing); ``factors_used`` lists the columns kept. Randomised metrics take ``seed`` (an int
or a numpy Generator): same seed, same numbers.

The β-VAE and FactorVAE metrics were defined with a simulator that can fix one factor and draw the
rest; our data is a fixed set of images, so both draw their "one factor fixed" groups from the data:
points whose discretised factor k is equal. With independent factors (as in the phantom) this is the
paper's sampling; with correlated factors the other factors are not free and the scores mean less.
"""

from __future__ import annotations

import numpy as np

from ctgen.errors import InputError
from ctgen.evaluation.metrics.fit import fit_logistic, lasso, predict_logistic, split_indices, standardize

__all__ = ["SCORE_NAMES", "discretize", "mig", "identity_nmi", "beta_vae_score", "factor_vae_score", "dci", "sap",
           "disentanglement_report"]

# the scores ``disentanglement_report`` gives, in the order reports and cards list them
SCORE_NAMES = ("mig", "beta_vae", "factor_vae", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap")


def discretize(factors: np.ndarray, bins: int = 20) -> np.ndarray:
    """Integer codes int64 (N, K) for the columns of ``factors`` float (N, K) (or (N,)).

    A column with at most ``bins`` distinct values is taken as categorical (codes 0..n_values-1 in
    sorted order); any other column is cut at its empirical quantiles into ``bins`` equally populated
    bins (fewer when ties make edges coincide).
    """
    values = np.asarray(factors, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    if values.ndim != 2 or bins < 2:
        raise InputError(None, f"discretize needs (N, K) values and bins >= 2, got {values.shape}, {bins}")
    codes = np.empty(values.shape, dtype=np.int64)
    inner = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    edges = np.quantile(values, inner, axis=0) if len(values) else np.zeros((bins - 1, values.shape[1]))
    for k in range(values.shape[1]):
        distinct, inverse = np.unique(values[:, k], return_inverse=True)
        if len(distinct) <= bins:
            codes[:, k] = inverse.reshape(-1)
        else:
            codes[:, k] = np.searchsorted(edges[:, k], values[:, k], side="right")
    return codes


def _inputs(latents: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    latents = np.asarray(latents, dtype=np.float64)
    factors = np.asarray(factors, dtype=np.float64)
    factors = factors[:, None] if factors.ndim == 1 else factors
    if latents.ndim != 2 or factors.ndim != 2 or len(latents) != len(factors):
        raise InputError(None, f"need latents (N, L) and factors (N, K), got {latents.shape} and {factors.shape}")
    if len(latents) < 10:
        raise InputError(None, f"need at least 10 points to score disentanglement, got {len(latents)}")
    if not (np.isfinite(latents).all() and np.isfinite(factors).all()):
        raise InputError(None, "latents and factors must be finite")
    used = [k for k in range(factors.shape[1]) if np.ptp(factors[:, k]) > 0]
    if not used:
        raise InputError(None, "every factor is constant: nothing to score against")
    return latents, factors[:, used], used


def _n_columns(factors: np.ndarray) -> int:
    return int(np.asarray(factors).reshape(len(factors), -1).shape[1])


def _entropy(counts: np.ndarray, axis: int = -1) -> np.ndarray:
    p = counts / np.maximum(counts.sum(axis=axis, keepdims=True), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=axis)


def mig(latents: np.ndarray, factors: np.ndarray, *, bins: int = 20) -> dict:
    """Mutual Information Gap (Chen et al. 2018, "Isolating sources of disentanglement in VAEs").

    MIG = mean over factors k of (I(z_j*; v_k) - I(z_j°; v_k)) / H(v_k), with j* and j° the latents
    of highest and second-highest mutual information with v_k. Chen et al. integrate over q(z|x);
    like most later work we use the plug-in estimate on the latent means, every latent and factor
    discretised into ``bins`` quantile bins (``discretize``). Returns ``mig`` in [0, 1], ``per_factor``
    gaps, ``mutual_information`` (L, K) nats, ``factor_entropy`` (K,) nats and the top two units of each
    factor. The plug-in MI of independent variables is biased up by about (bins - 1)² / (2N) nats.
    """
    latents, factors, used = _inputs(latents, factors)
    latent_codes = discretize(latents, bins)
    factor_codes = discretize(factors, bins)
    n, n_latents = latent_codes.shape
    latent_entropy = np.array([_entropy(np.bincount(c)) for c in latent_codes.T])
    mutual_information = np.empty((n_latents, len(used)))
    factor_entropy = np.empty(len(used))
    for k, codes in enumerate(factor_codes.T):
        n_values = int(codes.max()) + 1
        factor_entropy[k] = _entropy(np.bincount(codes))
        width = (int(latent_codes.max()) + 1) * n_values
        joint_index = latent_codes * n_values + codes[:, None] + width * np.arange(n_latents)
        joint = np.bincount(joint_index.ravel(), minlength=width * n_latents).reshape(n_latents, width)
        # I(z; v) = H(z) + H(v) - H(z, v)
        mutual_information[:, k] = latent_entropy + factor_entropy[k] - _entropy(joint)
    ranked = np.sort(mutual_information, axis=0)[::-1]
    second = ranked[1] if n_latents > 1 else np.zeros(len(used))
    gaps = (ranked[0] - second) / factor_entropy
    top = np.argsort(-mutual_information, axis=0, kind="stable")
    return {
        "mig": float(gaps.mean()),
        "per_factor": gaps.tolist(),
        "top_units": top[:2].T.tolist(),
        "mutual_information": mutual_information.tolist(),
        "factor_entropy": factor_entropy.tolist(),
        "factors_used": used,
    }


def identity_nmi(groups: np.ndarray, factor: np.ndarray, *, bins: int = 20, seed: int = 0, draws: int = 8) -> float:
    """The normalised MI with ``factor`` float (N,) of a unit that merely identifies the groups ``groups`` (N,)
    (e.g. patients): the group index in a random order, discretised as ``mig`` discretises units; the mean
    over ``draws`` orders. A factor that is constant within each group reaches 1.0 when there are at most
    ``bins`` groups: no unit can then be told apart from one that identifies groups."""
    factor_codes = discretize(np.asarray(factor, dtype=np.float64), bins)[:, 0]
    factor_entropy = float(_entropy(np.bincount(factor_codes)))
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    index = index.reshape(-1)
    if factor_entropy <= 0 or len(index) != len(factor_codes):
        return 0.0
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        unit_codes = discretize(rng.permutation(int(index.max()) + 1)[index].astype(np.float64), bins)[:, 0]
        n_values = int(factor_codes.max()) + 1
        joint = np.bincount(unit_codes * n_values + factor_codes)
        information = float(_entropy(np.bincount(unit_codes))) + factor_entropy - float(_entropy(joint))
        values.append(information / factor_entropy)
    return float(np.clip(np.mean(values), 0.0, 1.0))


def _groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For one code column: sort order, and per point its group's start in that order, size and own position."""
    order = np.argsort(codes, kind="stable")
    _, first, inverse, counts = np.unique(codes[order], return_index=True, return_inverse=True, return_counts=True)
    position = np.empty(len(codes), dtype=np.int64)
    position[order] = np.arange(len(codes))
    group = inverse.reshape(-1)[position]
    return order, first[group], counts[group], position


def beta_vae_score(
    latents: np.ndarray,
    factors: np.ndarray,
    *,
    seed: int | np.random.Generator = 0,
    batch_size: int = 64,
    n_train: int = 2000,
    n_eval: int = 1000,
    bins: int = 20,
) -> dict:
    """The β-VAE metric (Higgins et al. 2017), dataset variant; ``score`` = held-out accuracy in [0, 1].

    One vote: draw a factor k uniformly, ``batch_size`` anchor points uniformly from the data and for
    each a partner that shares the anchor's discretised factor k (``bins`` bins); the feature is
    mean |z_anchor - z_partner| over the batch (L,) and the label is k. A linear classifier
    (multinomial logistic regression on standardised features) is trained on ``n_train`` votes and
    scored on ``n_eval`` fresh ones. Chance is 1 / K.

    Two known blind spots, both from the definition: a code holding K - 1 factors perfectly and one
    not at all still scores 1 (Kim & Mnih 2018), and a generic rotation of a perfect code still
    scores high (fixing factor k leaves unit i a spread set by 1 - R_ik², a pattern distinct per k).
    Read it next to MIG, DCI and SAP.
    """
    latents, factors, used = _inputs(latents, factors)
    rng = np.random.default_rng(seed)
    codes = discretize(factors, bins)
    n_votes = n_train + n_eval
    labels = rng.integers(len(used), size=n_votes)
    anchors = rng.integers(len(latents), size=(n_votes, batch_size))
    partners = np.empty_like(anchors)
    for k in range(len(used)):
        rows = labels == k
        order, start, count, position = _groups(codes[:, k])
        a = anchors[rows]
        # a uniform other member of the anchor's group (the anchor itself only in a group of one)
        shift = 1 + rng.integers(0, np.maximum(count[a] - 1, 1))
        partners[rows] = order[start[a] + (position[a] - start[a] + shift) % count[a]]
    features = np.empty((n_votes, latents.shape[1]))
    for lo in range(0, n_votes, 128):
        hi = min(lo + 128, n_votes)
        features[lo:hi] = np.abs(latents[anchors[lo:hi]] - latents[partners[lo:hi]]).mean(axis=1)
    train, test = features[:n_train], features[n_train:]
    weights = fit_logistic(standardize(train), labels[:n_train], len(used))
    train_accuracy = float(np.mean(predict_logistic(weights, standardize(train)) == labels[:n_train]))
    eval_accuracy = float(np.mean(predict_logistic(weights, standardize(test, train)) == labels[n_train:]))
    return {"score": eval_accuracy, "train_accuracy": train_accuracy, "factors_used": used}


def factor_vae_score(
    latents: np.ndarray,
    factors: np.ndarray,
    *,
    seed: int | np.random.Generator = 0,
    batch_size: int = 64,
    n_train: int = 2000,
    n_eval: int = 1000,
    bins: int = 20,
    prune: float = 0.05,
) -> dict:
    """The FactorVAE metric (Kim & Mnih 2018), dataset variant; ``score`` = held-out accuracy in [0, 1].

    Latents are divided by their std over the whole dataset; units whose std is below ``prune`` x the
    largest std count as collapsed and are left out (Kim & Mnih prune collapsed units; the relative
    threshold is ours). One vote: draw a factor k, an anchor point, and ``batch_size`` points sharing
    the anchor's discretised factor k (without replacement when the group is large enough); the vote
    is (argmin over units of the normalised within-batch variance (ddof 1), k). The majority-vote classifier
    maps each unit to the factor it voted for most often on ``n_train`` votes; ``score`` is its
    accuracy on ``n_eval`` fresh votes. ``active_units`` lists the units kept. Like the β-VAE
    metric it can score a rotated code well: it only needs each factor's largest loading to sit in a
    different unit.
    """
    latents, factors, used = _inputs(latents, factors)
    rng = np.random.default_rng(seed)
    codes = discretize(factors, bins)
    std = latents.std(axis=0)
    active = np.flatnonzero(std > prune * std.max()) if std.max() > 0 else np.arange(0)
    if len(active) == 0:
        return {"score": 0.0, "train_accuracy": 0.0, "active_units": [], "factors_used": used}
    normalised = latents[:, active] / std[active]
    n_votes = n_train + n_eval
    labels = rng.integers(len(used), size=n_votes)
    anchors = rng.integers(len(latents), size=n_votes)
    groups = [_groups(codes[:, k]) for k in range(len(used))]
    members = np.empty((n_votes, batch_size), dtype=np.int64)
    for vote, (k, a) in enumerate(zip(labels, anchors)):
        order, start, count, _ = groups[k]
        offsets = rng.choice(count[a], size=batch_size, replace=bool(count[a] < batch_size))
        members[vote] = order[start[a] + offsets]
    chosen = np.empty(n_votes, dtype=np.int64)
    for lo in range(0, n_votes, 256):
        chosen[lo:lo + 256] = normalised[members[lo:lo + 256]].var(axis=1, ddof=1).argmin(axis=1)
    counts = np.zeros((len(active), len(used)))
    np.add.at(counts, (chosen[:n_train], labels[:n_train]), 1.0)
    predicted = counts.argmax(axis=1)
    train_accuracy = float(np.mean(predicted[chosen[:n_train]] == labels[:n_train]))
    eval_accuracy = float(np.mean(predicted[chosen[n_train:]] == labels[n_train:]))
    return {"score": eval_accuracy, "train_accuracy": train_accuracy, "active_units": active.tolist(),
            "factors_used": used}


def _r2(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    residual = np.sum((truth - prediction) ** 2, axis=0)
    spread = np.sum((truth - truth.mean(axis=0)) ** 2, axis=0)
    return 1.0 - residual / np.maximum(spread, 1e-300)


def dci(
    latents: np.ndarray,
    factors: np.ndarray,
    *,
    seed: int | np.random.Generator = 0,
    alpha: float | None = None,
    test_fraction: float = 0.3,
    r2_tolerance: float = 0.01,
) -> dict:
    """DCI (Eastwood & Williams 2018): disentanglement, completeness and informativeness.

    Importance matrix R (L, K) = |Lasso coefficients| predicting each standardised factor from the
    standardised latents (the paper's Lasso regressor; coordinate descent here), fitted on a seeded
    train split. Without ``alpha``, each factor's penalty is the largest on a grid (1 ... 0.001) whose
    R² on a validation fifth of the train split is within ``r2_tolerance`` of the best: the sparsest
    fit that predicts as well, so units that carry nothing get exactly zero importance while a
    factor spread over many units keeps them all. With P_ik = R_ik / Σ_k R_ik:
    ``disentanglement`` = Σ_i ρ_i (1 - H_K(P_i·)), ρ_i = Σ_k R_ik / Σ R (entropy in base K);
    ``completeness`` = mean_k (1 - H_L(R_·k / Σ_i R_ik)) (base L); ``informativeness`` = mean R² on the
    test split of the fit at the best validation penalty (``nrmse_per_factor``: the paper's
    normalised RMSE). D and C lie in [0, 1]; R² drops
    below 0 for predictions worse than the mean. A factor the code does not hold linearly lowers
    informativeness and gets no importance.
    """
    latents, factors, used = _inputs(latents, factors)
    rng = np.random.default_rng(seed)
    train, test = split_indices(len(latents), test_fraction, rng)
    x, y = standardize(latents[train]), standardize(factors[train])
    fit, val = split_indices(len(train), 0.2, rng)
    gram_fit, gram_val = x[fit].T @ x[fit], x[val].T @ x[val]
    cross_fit, cross_val = x[fit].T @ y[fit], x[val].T @ y[val]
    if alpha is None:
        grid = np.geomspace(1.0, 1e-3, 16)
        scores = np.empty((len(grid), len(used)))
        coef = None
        for row, value in enumerate(grid):
            coef = lasso(gram_fit / len(fit), cross_fit / len(fit), value, initial=coef)
            scores[row] = _r2(y[val], x[val] @ coef)
        penalty = grid[np.argmax(scores >= scores.max(axis=0) - r2_tolerance, axis=0)]
        best = grid[np.argmax(scores, axis=0)]
    else:
        penalty = best = np.full(len(used), float(alpha))
    gram, cross = (gram_fit + gram_val) / len(train), (cross_fit + cross_val) / len(train)
    importance = np.abs(lasso(gram, cross, penalty))
    coef = lasso(gram, cross, best)
    prediction = standardize(latents[test], latents[train]) @ coef
    truth = standardize(factors[test], factors[train])
    r2 = _r2(truth, prediction)
    nrmse = np.sqrt(np.mean((truth - prediction) ** 2, axis=0)) / np.maximum(truth.std(axis=0), 1e-300)
    n_latents, n_factors = importance.shape
    unit_total = importance.sum(axis=1)
    per_unit = np.zeros(n_latents)
    if n_factors == 1:
        per_unit[unit_total > 0] = 1.0
    else:
        rows = unit_total > 0
        per_unit[rows] = 1.0 - _entropy(importance[rows], axis=1) / np.log(n_factors)
    total = unit_total.sum()
    disentanglement = float(per_unit @ unit_total / total) if total > 0 else 0.0
    factor_total = importance.sum(axis=0)
    per_factor = np.zeros(n_factors)
    if n_latents == 1:
        per_factor[factor_total > 0] = 1.0
    else:
        cols = factor_total > 0
        per_factor[cols] = 1.0 - _entropy(importance[:, cols], axis=0) / np.log(n_latents)
    return {
        "disentanglement": disentanglement,
        "completeness": float(per_factor.mean()),
        "informativeness": float(r2.mean()),
        "r2_per_factor": r2.tolist(),
        "nrmse_per_factor": nrmse.tolist(),
        "disentanglement_per_unit": per_unit.tolist(),
        "completeness_per_factor": per_factor.tolist(),
        "importance": importance.tolist(),
        "alpha": penalty.tolist(),
        "alpha_informativeness": best.tolist(),
        "factors_used": used,
    }


def sap(
    latents: np.ndarray,
    factors: np.ndarray,
    *,
    discrete: list[bool] | None = None,
    seed: int | np.random.Generator = 0,
    test_fraction: float = 0.3,
) -> dict:
    """Separated Attribute Predictability (Kumar et al. 2018, DIP-VAE): mean over factors of the gap
    between the two highest entries of the factor's column of the score matrix S (L, K).

    S_ik is how well latent i alone predicts factor k: for a continuous factor the R² of a 1-D linear
    regression (the squared Pearson correlation); for a discrete one the held-out accuracy of a 1-D
    nearest-class-mean classifier (our choice of simple classifier; seeded split). ``discrete`` flags
    the factor columns (``None``: a column with at most 10 distinct values counts as discrete).
    """
    n_columns = _n_columns(factors)
    latents, factors, used = _inputs(latents, factors)
    if discrete is None:
        flags = [len(np.unique(column)) <= 10 for column in factors.T]
    elif len(discrete) != n_columns:
        raise InputError(None, f"discrete needs one flag per factor column ({n_columns}), got {len(discrete)}")
    else:
        flags = [bool(discrete[k]) for k in used]
    rng = np.random.default_rng(seed)
    train, test = split_indices(len(latents), test_fraction, rng)
    centred = latents - latents.mean(axis=0)
    latent_norm = np.sqrt(np.sum(centred**2, axis=0))
    scores = np.zeros((latents.shape[1], len(used)))
    for k, is_discrete in enumerate(flags):
        if not is_discrete:
            target = factors[:, k] - factors[:, k].mean()
            with np.errstate(divide="ignore", invalid="ignore"):
                correlation = centred.T @ target / (latent_norm * np.linalg.norm(target))
            scores[:, k] = np.nan_to_num(correlation) ** 2
            continue
        classes, labels = np.unique(factors[:, k], return_inverse=True)
        labels = labels.reshape(-1)
        for i in range(latents.shape[1]):
            sums = np.bincount(labels[train], weights=latents[train, i], minlength=len(classes))
            seen = np.bincount(labels[train], minlength=len(classes))
            means = np.where(seen > 0, sums / np.maximum(seen, 1), np.inf)
            guess = np.argmin(np.abs(latents[test, i][:, None] - means[None, :]), axis=1)
            scores[i, k] = np.mean(guess == labels[test])
    ranked = np.sort(scores, axis=0)[::-1]
    gaps = ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)
    return {"sap": float(gaps.mean()), "per_factor": gaps.tolist(), "score_matrix": scores.tolist(),
            "discrete": flags, "factors_used": used}


def disentanglement_report(
    latents: np.ndarray, factors: np.ndarray, *, names: list[str] | None = None, seed: int = 0
) -> dict:
    """All five metrics on one code: the headline numbers plus, per factor, the unit that carries it.

    ``names`` label the factor columns (default ``factor0``…). ``units`` maps each factor name to the
    two units of highest mutual information and their normalised MI (MI / H(v_k)).
    """
    latents, factors_all = np.asarray(latents), np.asarray(factors)
    names = names or [f"factor{k}" for k in range(_n_columns(factors_all))]
    gap = mig(latents, factors_all)
    mi = np.asarray(gap["mutual_information"]) / np.asarray(gap["factor_entropy"])
    units = {
        names[k]: {"unit": int(top[0]), "nmi": float(mi[top[0], j]),
                   "second_unit": int(top[-1]), "second_nmi": float(mi[top[-1], j])}
        for j, (k, top) in enumerate(zip(gap["factors_used"], gap["top_units"]))
    }
    dci_scores = dci(latents, factors_all, seed=seed)
    return {
        "mig": gap["mig"],
        "beta_vae": beta_vae_score(latents, factors_all, seed=seed)["score"],
        "factor_vae": factor_vae_score(latents, factors_all, seed=seed)["score"],
        "dci_disentanglement": dci_scores["disentanglement"],
        "dci_completeness": dci_scores["completeness"],
        "dci_informativeness": dci_scores["informativeness"],
        "sap": sap(latents, factors_all, seed=seed)["sap"],
        "units": units,
        "nmi": mi.tolist(),  # (L, K used): normalised MI of every unit with every factor kept
    }
