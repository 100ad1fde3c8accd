"""The implicit-bias prediction for diagonal linear networks (PAPERS.md#diagonal-theory).

Gradient flow on beta = u (.) v from u0 = alpha, v0 = 0 keeps u^2 - v^2 = alpha^2 and gives
beta(t) = (alpha^2 / 2) sinh(-2 X^T int r dt / n); its limit is the interpolator

    beta_alpha = argmin_beta phi_alpha(beta)  s.t.  X beta = y,
    phi_a(beta) = sum_i [ beta_i arcsinh(2 beta_i / a_i^2)
                          - sqrt(4 beta_i^2 + a_i^4) / 2 + a_i^2 / 2 ]

(grad phi_a(beta) = arcsinh(2 beta / a^2) lies in span(X^T) at the optimum: the KKT condition).
SAM flows reach the same kind of point with the effective initialization alpha_inf accumulated
along the trajectory (``simulator`` docstring), smaller for 1-SAM than for n-SAM than for GD, hence
sparser solutions.

Solver: the problem is strictly convex with linear constraints, so we solve its smooth dual,

    min_lambda D(lambda) = sum_i (a_i^2 / 2) cosh((X^T lambda)_i) - y^T lambda,
    beta(lambda) = (a^2 / 2) sinh(X^T lambda),   grad D = X beta(lambda) - y,
    hess D = X diag((a^2 / 2) cosh(X^T lambda)) X^T,

with scipy's trust-region Newton method (exact Hessian), then check the constraint residual.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize


def hyperbolic_entropy(beta: np.ndarray, a: np.ndarray | float) -> float:
    """phi_a(beta) (module docstring); ``a`` is a scalar or one value per coordinate."""
    beta = np.asarray(beta, dtype=np.float64)
    a2 = np.broadcast_to(np.asarray(a, dtype=np.float64) ** 2, beta.shape)
    return float(
        np.sum(beta * np.arcsinh(2 * beta / a2) - np.sqrt(4 * beta**2 + a2**2) / 2 + a2 / 2)
    )


def predict_interpolator(
    X: np.ndarray, y: np.ndarray, a: np.ndarray | float, tol: float = 1e-13, max_iter: int = 2000
) -> np.ndarray:
    """argmin phi_a(beta) s.t. X beta = y (module docstring). Raises if scipy does not reach a
    point with ||X beta - y|| <= 1e-8 (1 + ||y||)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    half_a2 = 0.5 * np.broadcast_to(np.asarray(a, dtype=np.float64) ** 2, (X.shape[1],))
    if np.any(half_a2 <= 0):
        raise ValueError("the effective initialization a must be > 0 in every coordinate")

    def f(lam):
        z = X.T @ lam
        return float(np.sum(half_a2 * np.cosh(z)) - y @ lam)

    def g(lam):
        return X @ (half_a2 * np.sinh(X.T @ lam)) - y

    def h(lam):
        return (X * (half_a2 * np.cosh(X.T @ lam))) @ X.T

    res = minimize(
        f,
        np.zeros(X.shape[0]),
        jac=g,
        hess=h,
        method="trust-exact",
        options={"gtol": tol, "maxiter": max_iter},
    )
    beta = half_a2 * np.sinh(X.T @ res.x)
    resid = np.linalg.norm(X @ beta - y)
    if not np.isfinite(resid) or resid > 1e-8 * (1 + np.linalg.norm(y)):
        raise RuntimeError(f"dual solver did not converge: ||X beta - y|| = {resid:.3g}")
    return beta


def relative_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b||_2 / ||b||_2."""
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))
