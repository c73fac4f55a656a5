"""Repeated texts are dropped before balancing, so no row can sit in both train and test."""

from __future__ import annotations

import numpy as np

from silentwatch.offline.evalset import DataSettings, load_evalset


def _write(path, rows):
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))


def test_duplicates_across_files_are_dropped_before_the_split(tmp_path):
    a = [(f"text {i}", i % 2) for i in range(60)]
    # The second file repeats 20 rows of the first (3 with the other label) and adds 20.
    b = [(f"text {i}", i % 2) for i in range(17)]
    b += [(f" text {i} ", 1 - i % 2) for i in range(17, 20)]
    b += [(f"new {i}", i % 2) for i in range(20)]
    _write(tmp_path / "a.csv", a)
    _write(tmp_path / "b.csv", b)
    d = DataSettings(path=[tmp_path / "a.csv", tmp_path / "b.csv"], max_rows=None)
    ev = load_evalset(d)
    assert ev.rows_loaded == 100 and ev.duplicates_dropped == 20
    assert ev.duplicate_label_conflicts == 3
    assert len(set(ev.texts)) == len(ev.texts) == 80
    parts = [set(np.asarray(ev.texts)[idx]) for idx in (ev.split.train, ev.split.test)]
    assert not parts[0] & parts[1]
    assert ev.describe(d)["duplicates_dropped"] == 20
    kept = load_evalset(d.model_copy(update={"dedupe": False, "balance": False}))
    assert len(kept.texts) == 100 and kept.duplicates_dropped == 0


def test_reports_say_how_many_repeats_were_dropped():
    from silentwatch.offline.gate.report import _duplicates
    from silentwatch.offline.stress.report import _dups

    data = {"duplicates_dropped": 72, "duplicate_label_conflicts": 2}
    assert _duplicates(data) == "; 72 repeated texts dropped (2 with another label)"
    assert _dups(data) == " (72 repeated texts dropped before balancing)"
    assert _duplicates({}) == _dups({"duplicates_dropped": 0}) == ""
