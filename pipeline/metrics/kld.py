"""KL divergence between PaSST label distributions, as audiocraft's ``kld.py`` defines it.

audiocraft (``audiocraft/metrics/kld.py``)::

    kl_divergence(pred_probs, target_probs, epsilon=1e-6)
        = kl_div((pred_probs + epsilon).log(), target_probs, reduction="none").sum(-1)
    update(preds=generated, targets=reference):
        kld_pq_sum += kl_divergence(generated_probs, reference_probs)   # KL(reference || generated)
        kld_qp_sum += kl_divergence(reference_probs, generated_probs)   # KL(generated || reference)
    compute: kld = kld_pq = kld_pq_sum / rows, kld_qp = kld_qp_sum / rows, kld_both = kld_pq + kld_qp

``torch.nn.functional.kl_div(input, target)`` is ``target * (log(target) - input)`` pointwise, with
``0 log 0 = 0``; so a row is ``sum_c t_c (log t_c - log(p_c + eps))`` = KL(target || pred), the
epsilon going only into the predicted side. Rows are 20 s segments (see :mod:`.passt`); the
reference and generated clip of a pair are cut with the same length (audiocraft passes one
``sizes`` for both), so their segments pair up row by row. Means are over all rows of all clips.

Names here say the direction: ``kld_ref_gen`` = KL(reference || generated) = audiocraft's ``kld`` /
``kld_pq``; ``kld_gen_ref`` = KL(generated || reference) = ``kld_qp``. With the paper's P =
generated and Q = reference, KLD(P||Q) is ``kld_gen_ref`` and KLD(Q||P) is ``kld_ref_gen``.
We compute in float64 (audiocraft: float32), which changes nothing beyond the 7th digit.
"""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy

EPSILON = 1e-6


def kl_rows(target, pred, eps: float = EPSILON) -> np.ndarray:
    """KL(target || pred) of each row: ``sum_c t log t - t log(p + eps)``, ``0 log 0 = 0``.

    Args:
        target: probabilities ``[N, C]`` (or ``[C]``), the distribution the divergence is "from".
        pred: probabilities of the same shape; ``eps`` is added to these only (audiocraft).
        eps: 1e-6 as published; 0 gives the plain KL (``inf`` where pred is 0 and target is not).

    Returns:
        float64 ``[N]`` (a scalar array for 1-D input).
    """
    target = np.asarray(target, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if target.shape != pred.shape:
        raise ValueError(f"target {target.shape} and pred {pred.shape} must have the same shape")
    with np.errstate(divide="ignore"):
        return (xlogy(target, target) - xlogy(target, pred + eps)).sum(axis=-1)


def kld_summary(ref_probs, gen_probs, eps: float = EPSILON) -> dict:
    """Both KL directions averaged over paired segment rows, named by direction.

    Args:
        ref_probs: reference (ground-truth) segment probabilities ``[N, C]``.
        gen_probs: generated segment probabilities ``[N, C]``, row ``i`` paired with ``ref_probs[i]``.
        eps: added to the second argument of each KL, as published.

    Returns:
        ``kld_ref_gen`` (KL(reference || generated), audiocraft's ``kld_pq``), ``kld_gen_ref``
        (KL(generated || reference), ``kld_qp``), ``kld_both`` (their sum), ``segments`` (N).
        With no rows the divergences are NaN.
    """
    ref = np.asarray(ref_probs, dtype=np.float64)
    gen = np.asarray(gen_probs, dtype=np.float64)
    if ref.ndim != 2 or ref.shape != gen.shape:
        raise ValueError(f"ref_probs {ref.shape} and gen_probs {gen.shape} must be equal [N, C] arrays")
    rows = ref.shape[0]
    if rows == 0:
        ref_gen = gen_ref = float("nan")
    else:
        ref_gen = float(kl_rows(ref, gen, eps).mean())
        gen_ref = float(kl_rows(gen, ref, eps).mean())
    return {"kld_ref_gen": ref_gen, "kld_gen_ref": gen_ref, "kld_both": ref_gen + gen_ref, "segments": rows}
