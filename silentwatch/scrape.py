"""Read a Prometheus text exposition into a flat ``{(name, labels): value}`` map."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]


class Samples(dict[Key, float]):
    def get_value(self, name: str, default: float = 0.0, **labels: str) -> float:
        return self.get((name, tuple(sorted(labels.items()))), default)

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """Cumulative ``(le, count)`` pairs of a histogram, sorted by ``le``."""
        out = []
        for (n, lab), v in self.items():
            d = dict(lab)
            if n == f"{name}_bucket" and all(d.get(k) == val for k, val in labels.items()):
                out.append((float(d["le"]), v))
        return sorted(out)


def parse(text: str) -> Samples:
    out = Samples()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(url: str, timeout: float = 5.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return parse(resp.read().decode("utf-8"))


def quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile`` (linear within a bucket) on cumulative buckets."""
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank = q * buckets[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0)
        prev_le, prev_c = le, c
    return prev_le
