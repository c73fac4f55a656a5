"""Read a Prometheus text exposition into a flat ``{(name, labels): value}`` map.

The project's one reader of ``/metrics``: the demo, the tests and the benchmarks all parse
through here, so that a series is named the same way wherever it is compared.

>>> m = parse('''# TYPE rpcs counter
... rpcs_total{rpc="Classify",code="OK"} 3.0
... rpcs_created{rpc="Classify",code="OK"} 1.7e9
... ''')
>>> m.get_value("rpcs_total", rpc="Classify", code="OK")
3.0
>>> m.matching("rpcs").by_series()
{'rpcs_total{code="OK",rpc="Classify"}': 3.0}
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]


def key(name: str, **labels: str) -> Key:
    """The key of one series: its name and its labels, sorted.

    >>> key("silentwatch_requests_total", rpc="Classify", code="OK")
    ('silentwatch_requests_total', (('code', 'OK'), ('rpc', 'Classify')))
    """
    return name, tuple(sorted(labels.items()))


def series(k: Key) -> str:
    r"""``name{label="value",...}`` as the exposition format writes it, labels sorted.

    A string key for JSON results and reports (a tuple key cannot be one).

    >>> series(key("silentwatch_requests_total", rpc="Classify", code="OK"))
    'silentwatch_requests_total{code="OK",rpc="Classify"}'
    >>> series(key("up"))
    'up'
    >>> series(key("x", path='a"b'))
    'x{path="a\\"b"}'
    """
    name, labels = k
    if not labels:
        return name
    # The exposition format's escapes, so that the string parses back to the same series.
    esc = {"\\": "\\\\", '"': '\\"', "\n": "\\n"}
    body = ",".join(f'{n}="{"".join(esc.get(c, c) for c in v)}"' for n, v in labels)
    return f"{name}{{{body}}}"


class Samples(dict[Key, float]):
    def get_value(self, name: str, default: float = 0.0, **labels: str) -> float:
        return self.get(key(name, **labels), default)

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """Cumulative ``(le, count)`` pairs of a histogram, sorted by ``le``."""
        out = []
        for (n, lab), v in self.items():
            d = dict(lab)
            if n == f"{name}_bucket" and all(d.get(k) == val for k, val in labels.items()):
                out.append((float(d["le"]), v))
        return sorted(out)

    def matching(self, *prefixes: str) -> Samples:
        """The series whose names start with one of ``prefixes``.

        Without the ``*_created`` samples: prometheus_client exports each counter's and
        histogram's creation time as one, a timestamp that is no measurement to compare.
        """
        return Samples(
            (k, v)
            for k, v in self.items()
            if k[0].startswith(prefixes) and not k[0].endswith("_created")
        )

    def by_series(self) -> dict[str, float]:
        """The same values keyed by :func:`series` strings (for JSON)."""
        return {series(k): v for k, v in self.items()}


def parse(text: str) -> Samples:
    out = Samples()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[key(s.name, **s.labels)] = s.value
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
