"""The regression tasks: the reference 12-point 1-D data set and a teacher-student task in d dims.

reference1d (PAPERS.md#relu-nets, "same data as Maennel et al."):
    x = [-5.5, -4.5, ..., 5.5] / 4 + 0.07,   y = 0.345 + [-2, 1.5, 0, 0, 2, 1, 0, -1, 0, 1, 2, -1].
teacher: x ~ N(0, I_d) (n_train and n_test points), y = sum_k a*_k relu(w*_k . x) with k teacher
    neurons, w*_k uniform on the unit sphere, a*_k = +-1 alternating, no bias and no label noise;
    the draw is a deterministic function of ``data_seed`` only (every run of a comparison sees the
    same data).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

TASKS = ("reference1d", "teacher")

REF_X_GRID = [-5.5, -4.5, -3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
REF_Y_OFFSETS = [-2.0, 1.5, 0.0, 0.0, 2.0, 1.0, 0.0, -1.0, 0.0, 1.0, 2.0, -1.0]


@dataclass
class Dataset:
    X: Tensor  # (n, d)
    y: Tensor  # (n,)
    X_test: Tensor | None = None
    y_test: Tensor | None = None
    teacher: dict | None = None
    X_val: Tensor | None = None
    y_val: Tensor | None = None

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @property
    def n(self) -> int:
        return self.X.shape[0]


def reference_1d(dtype: torch.dtype = torch.float64) -> Dataset:
    """The 12 points of the reference notebook (computed in ``dtype``, not the original float32)."""
    x = torch.tensor(REF_X_GRID, dtype=dtype) / 4 + 0.07
    y = 0.345 + torch.tensor(REF_Y_OFFSETS, dtype=dtype)
    return Dataset(x.reshape(-1, 1), y)


def teacher_student(
    d: int,
    teacher_width: int,
    n_train: int,
    n_test: int,
    data_seed: int,
    dtype=torch.float64,
    n_val: int = 0,
) -> Dataset:
    """Teacher-student regression data (module docstring). The ``n_val`` validation points are
    drawn after the training and test points, so adding them changes neither."""
    for name, v in (
        ("d", d),
        ("teacher_width", teacher_width),
        ("n_train", n_train),
        ("n_test", n_test),
    ):
        if v < 1:
            raise ValueError(f"{name}: must be >= 1 (got {v})")
    if n_val < 0:
        raise ValueError(f"n_val: must be >= 0 (got {n_val})")
    g = torch.Generator().manual_seed(int(data_seed))
    Wt = torch.randn(teacher_width, d, dtype=dtype, generator=g)
    Wt = Wt / torch.linalg.vector_norm(Wt, dim=1, keepdim=True)
    at = torch.tensor([(-1.0) ** k for k in range(teacher_width)], dtype=dtype)
    X = torch.randn(n_train + n_test, d, dtype=dtype, generator=g)
    y = torch.relu(X @ Wt.T) @ at
    ds = Dataset(
        X[:n_train], y[:n_train], X[n_train:], y[n_train:], {"W": Wt.tolist(), "a": at.tolist()}
    )
    if n_val:
        ds.X_val = torch.randn(n_val, d, dtype=dtype, generator=g)
        ds.y_val = torch.relu(ds.X_val @ Wt.T) @ at
    return ds
