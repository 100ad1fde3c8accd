"""Curvature of the loss: Hessian-vector products, top eigenvalues, trace and spectral density.

All methods use only Hessian-vector products H v = d/dw <grad L(w), v> (double back-propagation:
exact, no finite differences), so they work for any model without forming H (n x n):

- ``top_eigenvalues``: Lanczos with full re-orthogonalization (default) or power iteration with
  deflation (PyHessian's method). Lanczos returns the k *algebraically* largest eigenvalues;
  power iteration the k of largest *magnitude* (the same at a minimum, where H is nearly PSD).
- ``hutchinson_trace``: tr H = E[v^T H v] for Rademacher v (E[v v^T] = I), with its standard error.
- ``slq_density``: stochastic Lanczos quadrature. For a unit v, m Lanczos steps give a tridiagonal
  T_m = S diag(theta) S^T; the Gauss quadrature sum_j tau_j f(theta_j), tau_j = S_{1j}^2, equals
  v^T f(H) v for every polynomial f of degree < 2m, so the nodes theta_j with weights tau_j
  (summing to 1) estimate the spectral density phi(t) = (1/n) sum_i delta(t - lambda_i), averaged
  over random v (Lin, Saad & Yang 2016; Ghorbani et al. 2019).
- ``HessianOperator.dense``: the exact n x n Hessian (n HVPs), for small models and tests.

The SAM paper reports lambda_max and lambda_max / lambda_5 (``spectrum``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from sharpness.measures._common import (
    Data,
    LossFn,
    eval_mode,
    flat,
    is_single_batch,
    iter_batches,
    trainable,
    unflat,
)

__all__ = [
    "hessian_vector_product",
    "hessian_top_eigenvalue",
    "HessianOperator",
    "lanczos",
    "top_eigenvalues",
    "hutchinson_trace",
    "slq_density",
    "Density",
    "spectrum",
]


# ------------------------------------------------------------------------ closures (legacy API)
def hessian_vector_product(
    loss_fn: Callable[[], Tensor], params: Sequence[Tensor], vec: Sequence[Tensor]
) -> list[Tensor]:
    """H v = d/dw <grad L(w), v> by double back-propagation (exact, no finite differences)."""
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vec))
        return [h.detach() for h in torch.autograd.grad(dot, params)]


def hessian_top_eigenvalue(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    iters: int = 50,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> float:
    """lambda_max of the Hessian of ``loss_fn()`` w.r.t. ``params`` by power iteration.

    v <- H v / ||H v|| from a random unit v; the Rayleigh quotient v^T H v is returned once it
    changes by less than ``tol`` (relative) or after ``iters`` products. Power iteration finds the
    eigenvalue of largest magnitude; at (near) minima that is the largest positive one.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1 (got {iters})")
    params = [p for p in params if p.requires_grad]
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    norm = torch.sqrt(sum((x**2).sum() for x in v))
    v = [x / norm for x in v]
    eig = None
    for _ in range(iters):
        hv = hessian_vector_product(loss_fn, params, v)
        new = float(sum((a * b).sum() for a, b in zip(hv, v)))
        norm = torch.sqrt(sum((x**2).sum() for x in hv))
        if float(norm) == 0.0:
            return 0.0
        v = [x / norm for x in hv]
        if eig is not None and abs(new - eig) <= tol * max(abs(eig), 1e-12):
            return new
        eig = new
    return eig


# ------------------------------------------------------------------------------ the operator
class HessianOperator:
    """The Hessian of L(w) = sum_b n_b loss_fn(model(x_b), y_b) / sum_b n_b over ``data`` (one
    ``(x, y)`` batch or a re-iterable of batches) w.r.t. the model's trainable parameters, as a
    linear operator on flat vectors of length ``dim``.

    ``dtype=torch.float64`` measures a float64 copy of the model (inputs cast too); the model
    itself is never modified. ``eval_mode`` (default) evaluates with batch-norm running
    statistics and without dropout, so L is a deterministic function of w. For a single batch
    the gradient graph is built once and reused by every product (``cache_graph``), as PyHessian
    does; over several batches each product re-runs forward and backward per batch.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Data,
        *,
        dtype: torch.dtype | None = None,
        eval_mode: bool = True,
        cache_graph: bool = True,
    ) -> None:
        if dtype is not None and any(p.dtype != dtype for p in model.parameters()):
            model = copy.deepcopy(model).to(dtype)
        self.model = model
        self.loss_fn = loss_fn
        self.eval_mode = eval_mode
        self.names, self.params = trainable(model)
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.dim = sum(p.numel() for p in self.params)
        self.n_products = 0
        self._in_dtype = dtype
        if is_single_batch(data):
            self._batches = list(iter_batches(data, self.device, dtype))
        else:
            if iter(data) is data:  # a generator would be used up after one product
                raise ValueError("data must be an (x, y) batch or a re-iterable of batches")
            self._batches = data
        self._graph: list[Tensor] | None = None
        self._cache = cache_graph and is_single_batch(data)

    def _iter(self):
        if isinstance(self._batches, list):
            return iter(self._batches)
        return iter_batches(self._batches, self.device, self._in_dtype)

    def _grads(self, x: Tensor, y: Tensor, create_graph: bool) -> tuple[Tensor, list[Tensor]]:
        loss = self.loss_fn(self.model(x), y)
        gs = torch.autograd.grad(loss, self.params, create_graph=create_graph, allow_unused=True)
        return loss, [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, gs)]

    def _hv(self, grads: list[Tensor], vs: list[Tensor], retain: bool) -> Tensor:
        # d/dw <g(w), v> as one vector-Jacobian product of g (grad_outputs = v)
        live = [i for i, g in enumerate(grads) if g.requires_grad]
        if not live:  # the gradient does not depend on w: H = 0
            return torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        hs = torch.autograd.grad(
            [grads[i] for i in live],
            self.params,
            grad_outputs=[vs[i] for i in live],
            retain_graph=retain,
            allow_unused=True,
        )
        return flat([torch.zeros_like(p) if h is None else h for p, h in zip(self.params, hs)])

    def hvp(self, v: Tensor) -> Tensor:
        """H v for a flat vector v (length ``dim``)."""
        if v.shape != (self.dim,):
            raise ValueError(f"v must be a flat vector of length {self.dim}, got {tuple(v.shape)}")
        vs = unflat(v.to(self.dtype), self.params)
        self.n_products += 1
        if self._cache:
            if self._graph is None:
                with torch.enable_grad(), eval_mode(self.model, self.eval_mode):
                    x, y = self._batches[0]
                    self._graph = self._grads(x, y, create_graph=True)[1]
            # a backward through the stored graph: no forward, so no mode switches
            return self._hv(self._graph, vs, retain=True).detach()
        with torch.enable_grad(), eval_mode(self.model, self.eval_mode):
            total, n = torch.zeros(self.dim, dtype=self.dtype, device=self.device), 0
            for x, y in self._iter():
                grads = self._grads(x, y, create_graph=True)[1]
                total += self._hv(grads, vs, retain=False).detach() * x.shape[0]
                n += x.shape[0]
            return total / n

    def loss_and_grad(self) -> tuple[float, Tensor]:
        """L(w) and the flat gradient (example-weighted over the batches)."""
        tot, g, n = 0.0, torch.zeros(self.dim, dtype=self.dtype, device=self.device), 0
        with torch.enable_grad(), eval_mode(self.model, self.eval_mode):
            for x, y in self._iter():
                loss, grads = self._grads(x, y, create_graph=False)
                tot += float(loss.detach()) * x.shape[0]
                g += flat(grads) * x.shape[0]
                n += x.shape[0]
        return tot / n, g / n

    def dense(self) -> Tensor:
        """The exact Hessian as a (dim, dim) matrix, one HVP per column (small models only)."""
        if self.dim > 20000:
            raise ValueError(f"a dense Hessian of {self.dim} parameters is too large")
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return torch.stack([self.hvp(eye[i]) for i in range(self.dim)], dim=1)

    def random_vector(self, generator: torch.Generator, kind: str = "gaussian") -> Tensor:
        """A random flat vector drawn on the CPU from ``generator`` (device-independent)."""
        if kind == "rademacher":
            v = torch.randint(0, 2, (self.dim,), generator=generator).to(self.dtype) * 2 - 1
        elif kind == "gaussian":
            v = torch.randn(self.dim, generator=generator, dtype=self.dtype)
        else:
            raise ValueError(f"kind must be 'gaussian' or 'rademacher', got {kind!r}")
        return v.to(self.device)


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


# ----------------------------------------------------------------------------------- Lanczos
def lanczos(
    matvec: Callable[[Tensor], Tensor],
    v0: Tensor,
    steps: int,
    *,
    restart: Callable[[], Tensor] | None = None,
    callback: Callable[[np.ndarray, np.ndarray], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """Lanczos tridiagonalization with full re-orthogonalization (Gram-Schmidt, twice).

    From q_1 = v0 / ||v0||: beta_j q_{j+1} = H q_j - alpha_j q_j - beta_{j-1} q_{j-1},
    alpha_j = q_j^T H q_j, every new q orthogonalized against all previous ones (exact arithmetic
    needs no re-orthogonalization; floating point does, or spurious copies of converged
    eigenvalues appear). Returns (alpha (j,), beta (j-1,), Q (j, n)) with T = tridiag(beta,
    alpha, beta) = Q H Q^T. At a breakdown (beta ~ 0: the Krylov space is invariant, so T's
    eigenvalues are exact eigenvalues of H) it stops, or with ``restart`` continues from a fresh
    vector orthogonal to Q (beta = 0 there), which finds repeated eigenvalues too. ``callback``
    (alpha, beta) -> True stops early (convergence checks). At most n = len(v0) steps.
    """
    n = v0.numel()
    steps = min(int(steps), n)
    if steps < 1:
        raise ValueError(f"Lanczos steps must be >= 1 (got {steps})")
    tiny = torch.finfo(v0.dtype).eps ** 0.75
    Q = torch.zeros(steps, n, dtype=v0.dtype, device=v0.device)
    nrm = torch.linalg.vector_norm(v0)
    if float(nrm) == 0:
        raise ValueError("the Lanczos start vector is zero")
    Q[0] = v0 / nrm
    alpha: list[float] = []
    beta: list[float] = []
    for j in range(steps):
        w = matvec(Q[j])
        a = float(torch.dot(w, Q[j]))
        alpha.append(a)
        if j == steps - 1:
            break
        scale = float(torch.linalg.vector_norm(w))
        basis = Q[: j + 1]
        for _ in range(2):  # "twice is enough" (Kahan-Parlett)
            w = w - basis.T @ (basis @ w)
        b = float(torch.linalg.vector_norm(w))
        if b <= tiny * max(scale, abs(a), 1e-300):
            if restart is None:
                break
            w = restart().to(v0.dtype)
            for _ in range(2):
                w = w - basis.T @ (basis @ w)
            wn = float(torch.linalg.vector_norm(w))
            if wn == 0:
                break
            beta.append(0.0)
            Q[j + 1] = w / wn
            # no convergence check here: beta = 0 makes every residual vanish, yet copies of
            # the eigenvalues found (multiplicities) may still be missing from the new block
            continue
        beta.append(b)
        Q[j + 1] = w / b
        if callback is not None and callback(np.array(alpha), np.array(beta)):
            break
    k = len(alpha)
    return np.array(alpha), np.array(beta[: k - 1]), Q[:k]


def _tridiag_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    return np.linalg.eigh(T)


@dataclass
class Eigen:
    """Top eigenvalues in decreasing order, their unit eigenvectors (k, n) if requested, the
    number of Hessian-vector products used and whether every pair met the tolerance."""

    eigenvalues: list[float]
    eigenvectors: Tensor | None
    n_products: int
    converged: bool


def top_eigenvalues(
    op: HessianOperator,
    k: int = 5,
    *,
    method: str = "lanczos",
    max_iter: int = 100,
    tol: float = 1e-6,
    seed: int | torch.Generator = 0,
    return_vectors: bool = False,
) -> Eigen:
    """The k largest eigenvalues of ``op`` (a ``HessianOperator`` or anything with ``hvp``,
    ``dim``, ``random_vector``).

    lanczos: up to ``max_iter`` Lanczos steps (restarted on breakdown); stops when every one of
    the top k Ritz pairs (theta, s) has residual ||H y - theta y|| = |beta_j s_j| <=
    tol * max|theta|. power: for each i, power iteration on H restricted to the complement of
    the eigenvectors found so far (deflation), at most ``max_iter`` products, stopping when the
    Rayleigh quotient changes by less than tol (relative); largest magnitude first.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1 (got {max_iter})")
    k = min(k, op.dim)
    gen = _generator(seed)
    start = getattr(op, "n_products", 0)
    if method == "power":
        return _power_deflation(op, k, max_iter, tol, gen, return_vectors, start)
    if method != "lanczos":
        raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
    state = {"converged": False}

    def check(alpha: np.ndarray, beta: np.ndarray) -> bool:
        if len(alpha) < k:
            return False
        theta, S = _tridiag_eigh(alpha, beta[:-1])
        res = np.abs(beta[-1] * S[-1, -k:])  # ||H y_i - theta_i y_i|| of the top k Ritz pairs
        state["converged"] = bool(np.all(res <= tol * max(np.abs(theta).max(), 1e-300)))
        return state["converged"]

    v0 = op.random_vector(gen)
    alpha, beta, Q = lanczos(
        op.hvp, v0, max_iter, restart=lambda: op.random_vector(gen), callback=check
    )
    theta, S = _tridiag_eigh(alpha, beta)
    idx = np.argsort(theta)[::-1][:k]
    # a Krylov space that fills the whole space is exact
    converged = state["converged"] or len(alpha) >= op.dim
    vecs = None
    if return_vectors:
        Sk = torch.as_tensor(S[:, idx], dtype=Q.dtype, device=Q.device)
        vecs = (Q.T @ Sk).T
    return Eigen(
        [float(theta[i]) for i in idx], vecs, getattr(op, "n_products", 0) - start, converged
    )


def _power_deflation(op, k, max_iter, tol, gen, return_vectors, start) -> Eigen:
    vals: list[float] = []
    vecs: list[Tensor] = []
    all_conv = True

    def deflate(v: Tensor) -> Tensor:
        for u in vecs:
            v = v - torch.dot(u, v) * u
        return v

    for _ in range(k):
        v = deflate(op.random_vector(gen))
        v = v / torch.linalg.vector_norm(v)
        eig, conv = None, False
        for _ in range(max_iter):
            hv = deflate(op.hvp(v))
            new = float(torch.dot(hv, v))
            nrm = torch.linalg.vector_norm(hv)
            if float(nrm) == 0:
                eig, conv = 0.0, True
                break
            v = hv / nrm
            if eig is not None and abs(new - eig) <= tol * max(abs(eig), 1e-300):
                eig, conv = new, True
                break
            eig = new
        all_conv &= conv
        vals.append(float(eig))
        vecs.append(v)
    vt = torch.stack(vecs) if return_vectors else None
    return Eigen(vals, vt, getattr(op, "n_products", 0) - start, all_conv)


# ----------------------------------------------------------------------------------- trace
def hutchinson_trace(
    op: HessianOperator, n_samples: int = 100, *, seed: int | torch.Generator = 0
) -> tuple[float, float]:
    """Hutchinson's estimate of tr H: the mean of v^T H v over ``n_samples`` Rademacher vectors,
    and its standard error (sample std / sqrt(n); NaN for one sample). Exact for diagonal H."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1 (got {n_samples})")
    gen = _generator(seed)
    vals = []
    for _ in range(n_samples):
        v = op.random_vector(gen, "rademacher")
        vals.append(float(torch.dot(v, op.hvp(v))))
    a = np.array(vals)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
    return float(a.mean()), se


# ----------------------------------------------------------------------------------- density
@dataclass
class Density:
    """SLQ quadrature: ``nodes[r]`` and ``weights[r]`` (summing to 1) of the r-th random vector.

    The density estimate is the average over r of sum_j weights[r][j] delta(t - nodes[r][j]);
    ``smooth`` replaces the deltas by Gaussians of width ``sigma``."""

    nodes: list[list[float]]
    weights: list[list[float]]
    n_products: int = 0
    meta: dict = field(default_factory=dict)

    def smooth(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """phi(t) = (1/R) sum_r sum_j w_rj N(t; theta_rj, sigma^2) at the points of ``grid``;
        it integrates to 1 over the real line (a grid covering the nodes +- 5 sigma)."""
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0 (got {sigma})")
        t = np.asarray(grid, dtype=np.float64)[:, None]
        out = np.zeros(t.shape[0])
        for nd, wt in zip(self.nodes, self.weights):
            nd, wt = np.asarray(nd)[None, :], np.asarray(wt)[None, :]
            out += (wt * np.exp(-((t - nd) ** 2) / (2 * sigma**2))).sum(1)
        return out / (len(self.nodes) * sigma * math.sqrt(2 * math.pi))


def slq_density(
    op: HessianOperator,
    *,
    n_vectors: int = 1,
    steps: int = 90,
    seed: int | torch.Generator = 0,
) -> Density:
    """Stochastic Lanczos quadrature with ``n_vectors`` normalized Rademacher start vectors and
    ``steps`` Lanczos steps each (module docstring for the math). A breakdown (an invariant
    Krylov space) ends a run early: its quadrature is then exact for every f."""
    if n_vectors < 1:
        raise ValueError(f"n_vectors must be >= 1 (got {n_vectors})")
    gen = _generator(seed)
    start = getattr(op, "n_products", 0)
    nodes, weights = [], []
    for _ in range(n_vectors):
        v = op.random_vector(gen, "rademacher")
        alpha, beta, _ = lanczos(op.hvp, v, steps)
        theta, S = _tridiag_eigh(alpha, beta)
        nodes.append(theta.tolist())
        weights.append((S[0, :] ** 2).tolist())
    return Density(nodes, weights, getattr(op, "n_products", 0) - start)


# ---------------------------------------------------------------------------------- summary
def spectrum(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    k: int = 5,
    max_iter: int = 100,
    tol: float = 1e-6,
    trace_samples: int = 0,
    density_vectors: int = 0,
    density_steps: int = 90,
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> dict:
    """The SAM paper's summary of the Hessian at the model's weights: the top ``k`` eigenvalues,
    ``lambda_max`` and ``lambda_max / lambda_k`` (the paper's lambda_max / lambda_5 with k = 5),
    optionally Hutchinson's trace and the SLQ density (nodes and weights)."""
    op = HessianOperator(model, loss_fn, data, dtype=dtype)
    eig = top_eigenvalues(op, k, max_iter=max_iter, tol=tol, seed=seed)
    ev = eig.eigenvalues
    out: dict = {
        "eigenvalues": ev,
        "lambda_max": ev[0],
        f"lambda_max_over_lambda_{len(ev)}": ev[0] / ev[-1] if ev[-1] != 0 else math.nan,
        "eig_products": eig.n_products,
        "eig_converged": eig.converged,
        "n_params": op.dim,
    }
    if trace_samples:
        out["trace"], out["trace_se"] = hutchinson_trace(op, trace_samples, seed=seed + 1)
    if density_vectors:
        d = slq_density(op, n_vectors=density_vectors, steps=density_steps, seed=seed + 2)
        out["density_nodes"], out["density_weights"] = d.nodes, d.weights
    return out
