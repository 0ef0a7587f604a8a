"""Small numpy learners behind the disentanglement metrics: a seeded split, standardisation,
multinomial logistic regression (accelerated gradient descent) and the Lasso (coordinate descent).

Private to ``ctgen.evaluation.metrics.disentangle``: no scikit-learn, so ctgen's runtime stays light. Inputs are float64
2-D arrays; every routine is deterministic (the only randomness is the split's Generator).
"""

from __future__ import annotations

import numpy as np

from ctgen.errors import InputError

__all__ = ["split_indices", "standardize", "fit_logistic", "predict_logistic", "lasso"]


def split_indices(n: int, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random train/test split of ``range(n)``: two sorted int64 index arrays, both non-empty."""
    if n < 2 or not 0.0 < test_fraction < 1.0:
        raise InputError(None, f"cannot split {n} points with test fraction {test_fraction}")
    order = rng.permutation(n)
    n_test = min(max(1, int(round(n * test_fraction))), n - 1)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def standardize(values: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Columns of ``values`` (N, D) centred and scaled by the mean and std of ``reference`` (default: itself).

    Constant reference columns become exactly zero instead of dividing by zero.
    """
    reference = values if reference is None else reference
    mean = reference.mean(axis=0)
    std = reference.std(axis=0)
    scale = np.where(std > 0, std, np.inf)
    return (values - mean) / scale


def _with_bias(features: np.ndarray) -> np.ndarray:
    return np.hstack([features, np.ones((features.shape[0], 1))])


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    return logits / logits.sum(axis=1, keepdims=True)


def fit_logistic(
    features: np.ndarray, labels: np.ndarray, n_classes: int, *, l2: float = 1e-3, iterations: int = 150
) -> np.ndarray:
    """Multinomial logistic regression, weights float64 (D + 1, n_classes) (last row: bias).

    Minimises mean cross-entropy + ``l2``/2 ||W||² (bias included, which keeps the problem strongly
    convex) by Nesterov-accelerated gradient descent from zero with the step 1/Lipschitz, where the
    constant is 0.5 λmax(XᵀX / N) + l2 (the softmax Hessian is bounded by half the identity).
    Standardise the features first; the fit is deterministic.
    """
    design = _with_bias(np.asarray(features, dtype=np.float64))
    n = design.shape[0]
    lipschitz = 0.5 * float(np.linalg.eigvalsh(design.T @ design / n)[-1]) + l2
    step = np.float32(1.0 / lipschitz)
    # float32 halves the cost of the products that dominate; class decisions do not need more
    design = design.astype(np.float32)
    design_t = np.ascontiguousarray(design.T)
    targets = np.zeros((n, n_classes), dtype=np.float32)
    targets[np.arange(n), labels] = 1.0
    weights = np.zeros((design.shape[1], n_classes), dtype=np.float32)
    momentum = weights.copy()
    t = 1.0
    for _ in range(iterations):
        gradient = design_t @ (_softmax(design @ momentum) - targets) / np.float32(n) + np.float32(l2) * momentum
        updated = momentum - step * gradient
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        momentum = updated + np.float32((t - 1.0) / t_next) * (updated - weights)
        weights, t = updated, t_next
    return weights.astype(np.float64)


def predict_logistic(weights: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Class labels int64 (N,) from ``fit_logistic`` weights; ties go to the lowest class."""
    return np.argmax(_with_bias(np.asarray(features, dtype=np.float64)) @ weights, axis=1)


def lasso(
    gram: np.ndarray,
    cross: np.ndarray,
    alpha: float | np.ndarray,
    *,
    initial: np.ndarray | None = None,
    max_sweeps: int = 1000,
    tol: float = 1e-7,
) -> np.ndarray:
    """Lasso coefficients float64 (D, T) for T targets: min (1/2N)||y - Xw||² + alpha ||w||₁ per target.

    Takes the Gram matrix ``gram`` = XᵀX / N (D, D) and ``cross`` = Xᵀy / N (D, T) of centred data
    (no intercept), so one Gram serves many fits. ``alpha``: scalar or one per target (T,).
    Cyclic coordinate descent with covariance updates (Friedman, Hastie & Tibshirani 2010), all
    targets at once, from ``initial`` (warm start) or zero; stops when a sweep moves no coefficient
    by more than ``tol``.
    """
    coef = np.zeros_like(cross, dtype=np.float64) if initial is None else np.array(initial, dtype=np.float64)
    residual = cross - gram @ coef  # Xᵀ(y - Xw) / N
    diagonal = np.diag(gram).copy()
    active = np.flatnonzero(diagonal > 1e-12)
    for _ in range(max_sweeps):
        largest_change = 0.0
        for j in active:
            rho = residual[j] + diagonal[j] * coef[j]
            updated = np.sign(rho) * np.maximum(np.abs(rho) - alpha, 0.0) / diagonal[j]
            delta = updated - coef[j]
            if delta.any():
                residual -= np.outer(gram[:, j], delta)
                coef[j] = updated
                largest_change = max(largest_change, float(np.abs(delta).max()))
        if largest_change <= tol:
            break
    return coef
