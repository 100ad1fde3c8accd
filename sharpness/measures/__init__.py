"""Sharpness measures: Hessian spectrum, m-sharpness and loss-landscape slices.

- ``sharpness.measures.hessian``: Hessian-vector products, top eigenvalues (Lanczos / power
  iteration with deflation), Hutchinson trace, SLQ density, the exact dense Hessian.
- ``sharpness.measures.msharpness``: worst-case and average-case m-sharpness, plain or adaptive.
- ``sharpness.measures.landscape``: filter-normalized directions, 1-D / 2-D slices, linear
  interpolation between two weight vectors, batch-norm statistics recomputation.

``data`` arguments are one ``(x, y)`` batch or a re-iterable of batches; ``loss_fn(output,
target)`` returns the batch's mean loss. Everything needs torch and numpy only.
"""

from sharpness.measures._common import classification_error, eval_mode, evaluate
from sharpness.measures.hessian import (
    Density,
    Eigen,
    HessianOperator,
    hessian_top_eigenvalue,
    hessian_vector_product,
    hutchinson_trace,
    lanczos,
    slq_density,
    spectrum,
    top_eigenvalues,
)
from sharpness.measures.landscape import (
    filter_normalized_direction,
    interpolate,
    recompute_bn_stats,
    slice_1d,
    slice_2d,
)
from sharpness.measures.msharpness import m_sharpness, random_ball_point

__all__ = [
    "Density",
    "Eigen",
    "HessianOperator",
    "classification_error",
    "eval_mode",
    "evaluate",
    "filter_normalized_direction",
    "interpolate",
    "m_sharpness",
    "random_ball_point",
    "recompute_bn_stats",
    "slice_1d",
    "slice_2d",
    "hessian_top_eigenvalue",
    "hessian_vector_product",
    "hutchinson_trace",
    "lanczos",
    "slq_density",
    "spectrum",
    "top_eigenvalues",
]
