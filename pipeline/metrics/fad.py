"""Fréchet audio distance between two sets of embeddings (Google's FAD tool, ``fad_utils.py``).

Each SET is summarised by the mean and unbiased covariance of every embedding window of every file
pooled together (not per clip); the distance between the two Gaussians is
``d^2 = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy import linalg

SQRTM_RETRY_EPS = 1e-7
# The tool rejects a square root whose diagonal has imaginary parts beyond this.
IMAGINARY_TOLERANCE = 1e-3


class FrechetError(ValueError):
    """The covariance product has no usable real square root (the published tool raises here too)."""


def embedding_stats(embeddings: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance over all windows of all files of one set.

    Args:
        embeddings: one float ``[N_i, D]`` array per file (files with N_i = 0 are fine).

    Returns:
        ``(mu float64 [D], cov float64 [D, D])``, ``cov`` with denominator ``sum(N_i) - 1``.

    Raises:
        ValueError: fewer than 2 windows in all, or files of different D.
    """
    arrays = [np.asarray(e, dtype=np.float64) for e in embeddings]
    dims = {a.shape[1] for a in arrays if a.ndim == 2}
    if any(a.ndim != 2 for a in arrays) or len(dims) > 1:
        raise ValueError(f"embeddings must be [N_i, D] with one D, got shapes {[a.shape for a in arrays]}")
    stacked = np.concatenate(arrays) if arrays else np.empty((0, 0))
    if stacked.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 embedding windows, got {stacked.shape[0]}")
    return stacked.mean(axis=0), np.cov(stacked, rowvar=False, ddof=1)


def _trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray, method: str, retry_eps: float) -> float:
    if method == "eigen":
        # Tr sqrt(A B) = sum sqrt(eig(A B)): A B is similar to A^(1/2) B A^(1/2), whose eigenvalues are >= 0.
        eigenvalues = np.linalg.eigvals(cov_a @ cov_b)
        return float(np.sqrt(np.clip(eigenvalues.real, 0.0, None)).sum())
    if method != "sqrtm":
        raise ValueError(f"method must be 'sqrtm' or 'eigen', got {method!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():
            offset = np.eye(cov_a.shape[0]) * retry_eps
            root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if not np.isfinite(root).all():
        raise FrechetError("the square root of the covariance product is not finite, even with "
                           f"{retry_eps} added to the diagonals")
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0.0, atol=IMAGINARY_TOLERANCE):
            worst = float(np.abs(np.diagonal(root).imag).max())
            raise FrechetError(f"the square root of the covariance product has imaginary parts up to {worst:.3g} "
                               f"on its diagonal (tolerance {IMAGINARY_TOLERANCE})")
        root = root.real
    return float(np.trace(root))


def frechet_distance(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray, *,
                     method: str = "sqrtm", retry_eps: float = SQRTM_RETRY_EPS) -> float:
    """Fréchet distance ``d^2`` between N(mu_a, cov_a) and N(mu_b, cov_b).

    Args:
        mu_a, mu_b: float ``[D]``.
        cov_a, cov_b: float ``[D, D]``.
        method: ``"sqrtm"`` (published): ``scipy.linalg.sqrtm(cov_a @ cov_b)``, retried with
            ``retry_eps`` added to both diagonals when the result is not finite, real part kept;
            ``"eigen"``: the trace from the eigenvalues of ``cov_a @ cov_b`` (agrees to ~1e-12
            relative, faster for large D).
        retry_eps: the diagonal offset of the retry.

    Returns:
        ``d^2`` (a squared distance, as the tool reports it; may be slightly negative from rounding
        when the sets are identical).

    Raises:
        ValueError: shapes that do not match.
        FrechetError: no usable square root.
    """
    mu_a, mu_b = np.asarray(mu_a, dtype=np.float64), np.asarray(mu_b, dtype=np.float64)
    cov_a, cov_b = np.asarray(cov_a, dtype=np.float64), np.asarray(cov_b, dtype=np.float64)
    if mu_a.ndim != 1 or mu_a.shape != mu_b.shape:
        raise ValueError(f"means must be [D] of one shape, got {mu_a.shape} and {mu_b.shape}")
    if cov_a.shape != (mu_a.shape[0],) * 2 or cov_b.shape != cov_a.shape:
        raise ValueError(f"covariances must be [D, D] with D = {mu_a.shape[0]}, got {cov_a.shape} and {cov_b.shape}")
    difference = mu_a - mu_b
    trace_root = _trace_sqrt_product(cov_a, cov_b, method, retry_eps)
    return float(difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)
