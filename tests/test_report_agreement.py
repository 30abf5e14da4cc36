"""The metric-agreement section of bench-report: Kendall τ between the rankings the metrics give the cells, and each
metric's spread over seed blocks against the gaps between cells (synthetic rows, numbers checked by hand)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from bench.report import build_report
from bench.report.agreement import agreement_table
from bench.report.load import load
from bench.report.plan import plan_study
from report_rows import row, write

# four cells of one factor (steps): FID falls, precision rises with it, recall falls; 2 seed blocks per row
CELLS = {5: (2.0, 0.60, 0.90), 10: (1.0, 0.70, 0.85), 20: (0.5, 0.80, 0.80), 50: (0.45, 0.81, 0.70)}


def rows(with_new=True):
    out = []
    for steps, (fid, p, r) in CELLS.items():
        new = dict(precision=p, precision_std=0.02, precision_std_over="seeds", precision_repeats=2,
                   recall=r, recall_std=0.2, recall_std_over="seeds", recall_repeats=2) if with_new else {}
        out.append(row(steps=steps, fid=fid, fid_std=0.04, fid_std_over="seeds", fid_repeats=2, repeats=2, **new))
    return out


def plan_and_ok(tmp_path, data, metric):
    df, _ = load([str(write(tmp_path / "runs", data))])
    return plan_study(df, metrics=metric), df[df["status"] == "ok"]


def test_tau_spread_and_resolved_pairs(tmp_path):
    plan, ok = plan_and_ok(tmp_path, rows(), ["fid", "precision", "recall"])
    t = agreement_table(ok, plan, {})
    assert t.header == ["metric", "τ FID", "τ Precision", "τ Recall", "seed spread", "median gap", "spread / gap",
                        "pairs resolved"]
    body = {r[0].text: [c.text for c in r[1:]] for r in t.body}
    # FID (lower is better) and precision order the cells alike; recall in reverse
    assert body["FID"][:3] == ["1.00", "1.00", "-1.00"] and body["Recall"][:3] == ["-1.00", "-1.00", "1.00"]
    # FID: gaps |2-1|, |2-.5|, |2-.45|, |1-.5|, |1-.45|, |.5-.45| -> median (0.55 + 1)/2; se = 0.04/sqrt2 per cell:
    # a pair is resolved when its gap exceeds 2 * 0.04 = 0.08: all but (20, 50)
    assert body["FID"][3:] == ["0.04", "0.775", f"{0.04 / 0.775:.2f}", "83 %"]
    # recall's seed spread (0.2) dwarfs its gaps: no pair resolved
    assert body["Recall"][3:] == ["0.2", "0.1", "2.00", "0 %"]
    long = t.long.set_index("metric")
    assert long.loc["fid", "median_gap"] == pytest.approx(0.775) and long.loc["fid", "resolved"] == pytest.approx(5 / 6)
    fids, precs = [c[0] for c in CELLS.values()], [c[1] for c in CELLS.values()]
    assert long.loc["fid", "tau_precision"] == pytest.approx(kendalltau([-f for f in fids], precs).statistic)


def test_shown_with_the_new_scores_or_when_asked(tmp_path):
    report, out = build_report([str(write(tmp_path / "a", rows()))], str(tmp_path / "ra"), plots=False)
    md = (out / "report.md").read_text()
    assert "## Metric agreement over the 4 cells" in md and (out / "table_agreement.csv").is_file()
    assert "| Precision " in md  # the new scores are tabulated by default
    _, out = build_report([str(write(tmp_path / "b", rows(with_new=False)))], str(tmp_path / "rb"), plots=False)
    assert "Metric agreement" not in (out / "report.md").read_text()  # FID/KID/IS only: as before
    _, out = build_report([str(write(tmp_path / "c", rows(with_new=False)))], str(tmp_path / "rc"), plots=False,
                          agreement=True)
    md = (out / "report.md").read_text()
    assert "Metric agreement" in md and "τ KID" in md
    # KID's std over subsets is no spread over seed blocks: no spread, no resolved pairs for it
    kid = next(line for line in md.splitlines() if line.startswith("| KID"))
    assert kid.rstrip(" |").split("|")[-1].strip() == "—"


def test_equal_cells_stay_unresolved_whatever_their_last_bits():
    """Two cells with the same value and no spread over seeds (a density of 0.0002 in every block) are not told apart,
    even when one of them is an ulp off (another machine's summation order); a real gap still is."""
    import math

    import pandas as pd

    from bench.report.agreement import resolution

    def st(means):
        return pd.DataFrame({"mean": means, "std": [0.0] * len(means), "blocks": [2] * len(means)})

    assert resolution(st([0.0, 0.0, 0.1]))["resolved"] == pytest.approx(2 / 3)
    assert resolution(st([0.0002, math.nextafter(0.0002, 0.0), 0.1]))["resolved"] == pytest.approx(2 / 3)
    assert resolution(st([0.2, math.nextafter(0.2, 1.0), 0.1]))["resolved"] == pytest.approx(2 / 3)
