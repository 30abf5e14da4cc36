"""bench-report's distillation table: speed-up at matched FID on a synthetic teacher curve with a known answer."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from bench.report import build_report
from report_rows import row, write


def _rows():
    teacher = [row("distill_vs_ddim", steps=n, fid=f, fid_std=0.0, latency_p50=lat / 1000)
               for n, f, lat in [(1, 80.0, 1.0), (2, 40.0, 2.0), (4, 20.0, 4.0), (8, 10.0, 8.0)]]
    students = [row("distill_vs_ddim", steps=2, distill_method="progressive", fid=15.0, fid_std=0.5,
                    latency_p50=0.0005, distill_train_steps=600, distill_seconds=42.0),
                row("distill_vs_ddim", sampler="lcm", steps=1, distill_method="consistency", fid=5.0, fid_std=0.0,
                    latency_p50=0.00025, distill_train_steps=1000, distill_seconds=77.0)]
    return teacher + students


def test_speedup_table_on_a_known_curve(tmp_path):
    path = write(tmp_path / "runs", _rows())
    report, out = build_report([str(path)], str(tmp_path / "report"), metric="fid,latency_p50", plots=False)
    t = next(t for t in report.tables if t.name == "speedup")
    cells = {(r[0].text, r[1].text): [c.text for c in r] for r in t.body}
    col = {h: i for i, h in enumerate(t.header)}
    prog = cells[("progressive", "2")]
    # FID 15 lies halfway (in FID) between teacher 20 @ 4 ms and 10 @ 8 ms: log-latency halfway → 4·√2 ms
    assert prog[col["teacher latency at this FID (ms)"]] == f"{4 * 2 ** 0.5:.2f}"
    assert prog[col["speed-up at matched FID"]].startswith(f"{8 * 2 ** 0.5:.1f}× ± ")
    assert prog[col["DDIM FID at same steps"]] == "40.00" and prog[col["distill train steps"]] == "600"
    lcm = cells[("consistency", "1")]
    assert lcm[col["speed-up at matched FID"]] == "≥ 32.0×"  # better than every teacher cell: a lower bound
    assert cells[("ddim", "1")][col["speed-up at matched FID"]] == "—"
    assert lcm[col["Pareto"]] == "✓" and cells[("ddim", "8")][col["Pareto"]] == ""  # LCM is faster and better
    csv = (out / "table_speedup.csv").read_text()
    assert "speedup_p16" in csv and "pareto" in csv
    assert "Speed-up at matched FID" in (out / "report.md").read_text()
    assert float(t.long.set_index("method").loc["progressive", "speedup"]) == pytest.approx(8 * 2 ** 0.5)


def test_speedup_from_nfe_times_per_call_shown_only_with_per_call_rows(tmp_path):
    """Rows with per_call_s get a second speed-up from the model's cost alone, NFE × per-call time."""
    rows = _rows()
    for r in rows:
        r["per_call_s"] = 0.0005  # the model costs 0.5 ms per image-forward in every cell
    report, _ = build_report([str(write(tmp_path / "runs", rows))], str(tmp_path / "report"),
                             metric="fid,latency_p50", plots=False)
    t = next(t for t in report.tables if t.name == "speedup")
    col = {h: i for i, h in enumerate(t.header)}
    prog = next([c.text for c in r] for r in t.body if (r[0].text, r[1].text) == ("progressive", "2"))
    # teacher model cost 0.5·NFE ms: FID 15 halfway between 2 ms (4 steps) and 4 ms (8 steps) → 2√2 ms; student 1 ms
    assert prog[col["NFE × per-call (ms/img)"]] == "1.00"
    assert prog[col["speed-up at matched FID from NFE × per-call"]].startswith(f"{2 * 2 ** 0.5:.1f}× ± ")
    assert prog[col["speed-up at matched FID"]].startswith(f"{8 * 2 ** 0.5:.1f}× ± ")  # latency's, unchanged
    long = t.long.set_index("method")
    assert float(long.loc["progressive", "speedup_nfe_x_per_call"]) == pytest.approx(2 * 2 ** 0.5)
    (plain, _) = build_report([str(write(tmp_path / "plain", _rows()))], str(tmp_path / "r2"),
                              metric="fid,latency_p50", plots=False)
    assert "NFE × per-call (ms/img)" not in next(t for t in plain.tables if t.name == "speedup").header
