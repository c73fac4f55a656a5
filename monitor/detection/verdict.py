"""The two signals: input drift (a ticket) and silent failure (a page).

*Input drift* is the drift detectors' family alarm (:mod:`.engine`): the traffic changed.
Real traffic always changes, and a frozen head's accuracy often does not move with it
(docs/benchmarks.md, "Drift is not harm"), so input drift never pages.

*Silent failure* is evidence that the classifier got worse while it kept answering:

``paired_canaries``
    the latest paired canary submission's paired ROC-AUC drop test or paired Brier-score
    test confirmed the head got worse beyond its margin (:mod:`.paired_canaries`);
``label_confirmation``
    the last label-confirmation check confirmed the rolling labelled ROC-AUC fell below
    the bundle's held-out one by more than the margin
    (:mod:`~silentwatch.monitor.evaluation.confirmation`).

Each source is a one-sided test at its own ``alpha`` per check; the signal is their
union, so per check round its false-alarm rate is at most the sum of the alphas
(Bonferroni), 0.005 + 0.005 = 0.01 by default.

A multi-head bundle has one signal per head (which category got worse) and the bundle's
signal is their union. Each head's tests run at ``alpha / heads`` (the engine and
:mod:`.paired_canaries` split it), so the union over heads and sources keeps the same
bound: 0.01 per check round by default, however many heads.
"""

from __future__ import annotations

from dataclasses import dataclass

from silentwatch.monitor.detection.paired_canaries import PairedCanaryStatus
from silentwatch.monitor.detection.status import ConfirmationStatus, EngineStatus

PAIRED_CANARIES = "paired_canaries"
LABEL_CONFIRMATION = "label_confirmation"
SOURCES = (PAIRED_CANARIES, LABEL_CONFIRMATION)


@dataclass(frozen=True)
class SilentFailureStatus:
    """The page: which evidence raised it, and which evidence this sidecar can gather.

    For the bundle, ``heads`` holds each head's own status (the default first) and the
    fields above are their union; a head's own status has ``heads == ()``.
    """

    active: bool
    evidence: tuple[str, ...]  # the sources that raised it now
    sources: tuple[str, ...]  # the sources that can raise it on this sidecar
    unavailable: tuple[str, ...]  # "<source>: <why not>"
    false_alarm_rate: float  # per check round, all available sources together
    summary: str
    heads: tuple[HeadVerdict, ...] = ()

    @property
    def failing_heads(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.heads if h.status.active)


@dataclass(frozen=True)
class HeadVerdict:
    """One head's silent-failure status."""

    name: str
    status: SilentFailureStatus


def _head_status(
    conf: ConfirmationStatus | None,
    canaries: PairedCanaryStatus,
    index: int,
    heads: int,
    detection_off: str,
) -> SilentFailureStatus:
    """One head's evidence (module docstring); ``conf`` None: detection is off."""
    sources: list[str] = []
    unavailable: list[str] = []
    evidence: list[str] = []
    rate = 0.0
    parts: list[str] = []
    if canaries.available:
        sources.append(PAIRED_CANARIES)
        rate += canaries.alpha / heads
        r = canaries.head_reading(index)
        if r is not None and r.failure:
            evidence.append(PAIRED_CANARIES)
            b = r.brier_increase
            # Quote the bound of each test that confirmed: a negative bound of one that did
            # not would read as evidence it is not.
            bounds = [
                f"{name} >= {bound:.3f}"
                for name, bound, ok in (
                    ("AUC drop", r.auc_drop.lower_bound, r.auc_drop.confirmed),
                    ("Brier rise", b.lower_bound, b.confirmed),
                )
                if ok
            ]
            parts.append(
                f"canaries: ROC-AUC {r.reference_auc:.3f} -> {r.live_auc:.3f}, Brier "
                f"{b.reference_brier:.3f} -> {b.live_brier:.3f} on the same {r.size} texts "
                f"({', '.join(bounds)}, each at {1 - r.alpha / 2:.2%} confidence)"
            )
    else:
        unavailable.append(f"{PAIRED_CANARIES}: {canaries.unavailable_reason}")
    if conf is not None and conf.enabled:
        sources.append(LABEL_CONFIRMATION)
        rate += conf.alpha
        if conf.confirmed and conf.last is not None:
            evidence.append(LABEL_CONFIRMATION)
            t = conf.last
            parts.append(
                f"labels: ROC-AUC {conf.reference_auc:.3f} -> {t.live_auc:.3f} on "
                f"{t.n_positive + t.n_negative} labelled rows (drop >= "
                f"{t.drop_lower_bound:.3f} at {1 - conf.alpha:.1%} confidence)"
            )
    elif conf is not None:
        unavailable.append(f"{LABEL_CONFIRMATION}: the bundle records no held-out ROC-AUC")
    else:
        unavailable.append(f"{LABEL_CONFIRMATION}: {detection_off}")
    if evidence:
        summary = "the classifier got worse: " + "; ".join(parts)
    elif sources:
        summary = "no evidence that the classifier got worse"
        if canaries.available and canaries.last is None:
            summary += " (no canary submission yet: GetCanaries, then SubmitCanaryEmbeddings)"
    else:
        summary = "no evidence source available: " + "; ".join(unavailable)
    return SilentFailureStatus(
        active=bool(evidence),
        evidence=tuple(evidence),
        sources=tuple(sources),
        unavailable=tuple(unavailable),
        false_alarm_rate=rate,
        summary=summary,
    )


def silent_failure(
    detection: EngineStatus | None,
    canaries: PairedCanaryStatus,
    detection_disabled_reason: str = "",
    head_names: tuple[str, ...] = ("default",),
) -> SilentFailureStatus:
    """Combine the evidence sources into the silent-failure signal, per head and for the
    bundle (module docstring).

    >>> from silentwatch.monitor.detection.paired_canaries import unavailable_status
    >>> s = silent_failure(None, unavailable_status("no canaries"), "detection off")
    >>> s.active, s.sources, s.unavailable
    (False, (), ('paired_canaries: no canaries', 'label_confirmation: detection off'))
    """
    off = detection_disabled_reason or "detection off"
    k = len(head_names)
    per_head = []
    for j, name in enumerate(head_names):
        conf = None
        if detection is not None:
            conf = (
                detection.heads[j].labelled.confirmation
                if detection.heads
                else detection.labelled.confirmation
            )
        per_head.append(HeadVerdict(name, _head_status(conf, canaries, j, k, off)))
    if k == 1:
        only = per_head[0].status
        return SilentFailureStatus(
            only.active,
            only.evidence,
            only.sources,
            only.unavailable,
            only.false_alarm_rate,
            only.summary,
            tuple(per_head),
        )

    def union(attr: str) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for h in per_head:
            seen.update(dict.fromkeys(getattr(h.status, attr)))
        return tuple(seen)

    failing = [h for h in per_head if h.status.active]
    if failing:
        summary = "; ".join(f"head {h.name}: {h.status.summary}" for h in failing)
    else:
        summary = per_head[0].status.summary.replace("the classifier", "any head")
    return SilentFailureStatus(
        active=bool(failing),
        evidence=union("evidence"),
        sources=union("sources"),
        unavailable=union("unavailable"),
        false_alarm_rate=sum(h.status.false_alarm_rate for h in per_head),
        summary=summary,
        heads=tuple(per_head),
    )
