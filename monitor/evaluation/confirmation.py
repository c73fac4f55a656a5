"""Label confirmation: has the classifier's ROC-AUC on labelled traffic fallen below the
figure it was validated at?

The delayed labels are the only direct evidence of harm: drift says the inputs changed,
a drop in ROC-AUC says the classifier got worse. This module turns the rolling labelled
ROC-AUC into a one-sided test against the bundle's held-out ROC-AUC, with the sampling
error of *both* estimates, so a small labelled window cannot raise it by chance.

Hypotheses, with ``margin`` the drop that still counts as "no worse" (benign traffic
shifts move a frozen head's AUC by less than 0.01 on the project's benchmark):

``H0: AUC_live >= AUC_ref - margin``   vs   ``H1: AUC_live < AUC_ref - margin``

``z = (AUC_ref - margin - AUC_live) / sqrt(Var(AUC_ref) + Var(AUC_live))``; the drop is
confirmed when ``z > z_{1-alpha}``, i.e. when the one-sided lower confidence bound of the
drop, ``AUC_ref - AUC_live - z_{1-alpha} * SE``, exceeds ``margin``. The two samples are
independent (held-out rows at training time, live traffic now), so their variances add.
Each AUC's variance is Hanley & McNeil's (1982), "The meaning and use of the area under a
receiver operating characteristic (ROC) curve", Radiology 143(1):29-36, Eq. 1-3:

``Var(A) = [A(1-A) + (n1-1)(Q1-A^2) + (n0-1)(Q2-A^2)] / (n1 n0)``,
``Q1 = A / (2 - A)``, ``Q2 = 2 A^2 / (1 + A)``,

with ``n1`` positives and ``n0`` negatives. The normal approximation needs both classes:
below ``min_per_class`` labelled rows of either class the test abstains.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from scipy.stats import norm

#: A drop up to this is "no worse": benign shifts stay within it (docs/detection.md).
DEFAULT_MARGIN = 0.01
#: Per-check false-confirmation rate when the classifier is no worse than the margin: half
#: of the silent-failure signal's 1% (the other half goes to paired canaries, Bonferroni;
#: monitor/detection/verdict.py).
DEFAULT_ALPHA = 0.005
#: Joined labels between two checks (each check tests the rolling window once).
DEFAULT_CONFIRM_EVERY = 250
#: Fewer labelled rows than this in either class: no test (the approximation is poor).
MIN_PER_CLASS = 20

NAN = float("nan")


def hanley_mcneil_variance(auc: float, n_positive: int, n_negative: int) -> float:
    """Variance of an ROC-AUC estimate (Hanley & McNeil 1982, Eq. 1-3).

    >>> round(hanley_mcneil_variance(0.85, 100, 100), 6)
    0.000757
    >>> hanley_mcneil_variance(0.85, 0, 100)
    nan
    """
    if n_positive < 1 or n_negative < 1 or not math.isfinite(auc):
        return NAN
    a = auc
    q1 = a / (2.0 - a)
    q2 = 2.0 * a * a / (1.0 + a)
    num = a * (1.0 - a) + (n_positive - 1) * (q1 - a * a) + (n_negative - 1) * (q2 - a * a)
    return max(num, 0.0) / (n_positive * n_negative)


@dataclass(frozen=True)
class AucDropTest:
    """One label-confirmation check (see the module docstring)."""

    reference_auc: float
    live_auc: float
    drop: float  # reference - live
    standard_error: float  # of the drop
    z: float
    p_value: float
    drop_lower_bound: float  # one-sided (1 - alpha) lower confidence bound of the drop
    confirmed: bool
    n_positive: int
    n_negative: int
    margin: float
    alpha: float

    def as_dict(self) -> dict[str, float | bool | int]:
        return asdict(self)


def auc_drop_test(
    live_auc: float,
    n_positive: int,
    n_negative: int,
    reference_auc: float,
    reference_positive: int,
    reference_negative: int,
    *,
    margin: float = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
    min_per_class: int = MIN_PER_CLASS,
) -> AucDropTest:
    """Test whether ``live_auc`` fell more than ``margin`` below ``reference_auc``.

    Abstains (``confirmed=False``, NaN statistics) when either sample has fewer than
    ``min_per_class`` rows of a class or an AUC is not finite.

    >>> t = auc_drop_test(0.55, 150, 150, 0.86, 500, 500)
    >>> t.confirmed, round(t.drop, 2), round(t.drop_lower_bound, 3)
    (True, 0.31, 0.219)
    >>> auc_drop_test(0.855, 150, 150, 0.86, 500, 500).confirmed
    False
    >>> auc_drop_test(0.5, 5, 300, 0.86, 500, 500).confirmed  # too few positives: abstain
    False
    """
    enough = min(n_positive, n_negative, reference_positive, reference_negative) >= min_per_class
    var = hanley_mcneil_variance(live_auc, n_positive, n_negative) + hanley_mcneil_variance(
        reference_auc, reference_positive, reference_negative
    )
    drop = reference_auc - live_auc
    if not enough or not math.isfinite(var) or var <= 0.0:
        return AucDropTest(
            reference_auc, live_auc, drop, NAN, NAN, NAN, NAN, False,
            n_positive, n_negative, margin, alpha,
        )  # fmt: skip
    se = math.sqrt(var)
    z = (drop - margin) / se
    lower = drop - float(norm.ppf(1.0 - alpha)) * se
    return AucDropTest(
        reference_auc=reference_auc,
        live_auc=live_auc,
        drop=drop,
        standard_error=se,
        z=z,
        p_value=float(norm.sf(z)),
        drop_lower_bound=lower,
        confirmed=bool(lower > margin),
        n_positive=n_positive,
        n_negative=n_negative,
        margin=margin,
        alpha=alpha,
    )


def labels_to_confirm(
    reference_auc: float,
    live_auc: float,
    prevalence: float,
    reference_positive: int,
    reference_negative: int,
    *,
    margin: float = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
    power: float = 0.8,
    max_labels: int = 10_000_000,
) -> int | None:
    """Fewest labelled rows (``prevalence`` of them positive) for which the test confirms
    a true fall from ``reference_auc`` to ``live_auc`` with probability ``power``.

    Under ``H1`` the estimated drop is about normal around the true drop with the same
    standard error, so the test confirms with probability
    ``Phi((drop - margin) / SE - z_{1-alpha})``; this searches for the smallest ``n``
    where that reaches ``power``. ``None`` when no ``n`` up to ``max_labels`` does (the
    reference's own error alone is too large, or the drop is within the margin).

    >>> labels_to_confirm(0.86, 0.55, 0.3, 500, 500)
    65
    >>> labels_to_confirm(0.86, 0.855, 0.3, 500, 500) is None
    True
    """
    drop = reference_auc - live_auc
    if drop <= margin or not 0.0 < prevalence < 1.0:
        return None
    need = float(norm.ppf(1.0 - alpha) + norm.ppf(power))
    var_ref = hanley_mcneil_variance(reference_auc, reference_positive, reference_negative)

    def confirms(n: int) -> bool:
        n1 = max(1, round(n * prevalence))
        n0 = max(1, n - n1)
        if min(n1, n0) < MIN_PER_CLASS:
            return False
        se = math.sqrt(var_ref + hanley_mcneil_variance(live_auc, n1, n0))
        return (drop - margin) / se >= need

    if not confirms(max_labels):
        return None
    lo, hi = 1, max_labels  # confirms(hi) holds; find the smallest such n
    while lo < hi:
        mid = (lo + hi) // 2
        if confirms(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
