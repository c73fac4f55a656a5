"""Cut ``civil_comments_sample.csv`` from the two upstream Civil Comments files.

The sample lets the README's gate examples run from a fresh clone. It is deterministic:
rows are chosen by the sha256 of their text, not by a random generator, so the same
upstream files give the same bytes on any machine and any numpy version.

Usage::

    python examples/data/make_sample.py AUTOLABEL_1K.csv CODY140_4900.csv

(the upstream files named in ``PROVENANCE.md``, checked against their sha256). It writes
``civil_comments_sample.csv`` beside this script (``text`` and the seven rater-fraction
columns) and prints its row counts, per-column positives and sha256.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from pathlib import Path

#: sha256 of the upstream files this script was written for (PROVENANCE.md).
UPSTREAM_SHA256: dict[str, str] = {
    "autolabel_civil_comments_1k.csv": (
        "62daa70b25880f4ccb49740d7217b3172d4a2c674db074afb245e0e84065e3fa"
    ),
    "cody140_civil_comments_4900.csv": (
        "e08e5682875c24e6d99b9c16a1888d1c205f7ca84c7c6661ab13ab3bb8312417"
    ),
}
#: Civil Comments' rater-fraction columns, all kept (one classifier head each); the
#: selection uses ``toxicity`` alone, so adding the others left the rows and their order as
#: they were.
COLUMNS = (
    "toxicity",
    "severe_toxicity",
    "obscene",
    "threat",
    "insult",
    "identity_attack",
    "sexual_explicit",
)
#: Rows kept per class (toxic: toxicity >= 0.5, non-toxic: below).
PER_CLASS = 1000
THRESHOLD = 0.5
OUT = Path(__file__).with_name("civil_comments_sample.csv")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rank(text: str) -> str:
    # The selection order: a hash of the text is stable everywhere, unlike an RNG stream.
    return hashlib.sha256(("silentwatch-sample\0" + text).encode("utf-8")).hexdigest()


def read_pooled(paths: list[Path]) -> dict[str, dict[str, float]]:
    """Text -> its rater fractions over all files; the first occurrence of a text wins.

    Parameters
    ----------
    paths
        The upstream CSV files (columns ``text`` and :data:`COLUMNS` among others).

    Returns
    -------
    dict of str to dict of str to float
        De-duplicated texts (49 texts appear in both files, 17 twice in one), each with
        its value in every one of :data:`COLUMNS`.
    """
    pooled: dict[str, dict[str, float]] = {}
    for path in paths:
        with path.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                text = row["text"]
                if text.strip() and text not in pooled:
                    pooled[text] = {c: float(row[c]) for c in COLUMNS}
    return pooled


def select(
    pooled: dict[str, dict[str, float]], per_class: int = PER_CLASS
) -> list[tuple[str, dict[str, float]]]:
    """``per_class`` toxic and ``per_class`` non-toxic rows, lowest text hash first.

    Parameters
    ----------
    pooled
        Text -> rater fractions (:func:`read_pooled`).
    per_class
        Rows kept from each class (on ``toxicity``).

    Returns
    -------
    list of (text, fractions)
        Both classes interleaved in hash order, so the file has no class blocks.
    """
    toxic = sorted((t for t, v in pooled.items() if v["toxicity"] >= THRESHOLD), key=_rank)
    clean = sorted((t for t, v in pooled.items() if v["toxicity"] < THRESHOLD), key=_rank)
    keep = toxic[:per_class] + clean[:per_class]
    return [(t, pooled[t]) for t in sorted(keep, key=_rank)]


def main(argv: list[str]) -> int:
    """Check the upstream files, write the sample, print what it holds."""
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    paths = [Path(a) for a in argv]
    for path in paths:
        want = UPSTREAM_SHA256.get(path.name)
        if want is None or _sha256(path) != want:
            print(f"{path}: not an upstream file named in PROVENANCE.md", file=sys.stderr)
            return 2
    rows = select(read_pooled(paths))
    with OUT.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["text", *COLUMNS])
        # Six decimals: the upstream floats carry float32 noise digits that add only bytes.
        w.writerows((t, *(f"{v[c]:.6f}" for c in COLUMNS)) for t, v in rows)
    n_toxic = sum(v["toxicity"] >= THRESHOLD for _, v in rows)
    print(f"{OUT.name}: {len(rows)} rows, {n_toxic} toxic, {len(rows) - n_toxic} non-toxic")
    for c in COLUMNS:
        # What a head per column has to learn from: positives at the usual 0.5.
        print(f"  {c:<16} {sum(v[c] >= THRESHOLD for _, v in rows):5d} rows >= {THRESHOLD}")
    print(f"bytes {OUT.stat().st_size}, sha256 {_sha256(OUT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
