"""bench-report on synthetic rows in the documented row format (tests/fixtures/report_rows.py)."""
from __future__ import annotations

import math
import re
import statistics
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from bench.report import ReportError, build_report, main
from bench.report.formatting import decimals
from bench.report.load import load
from bench.report.plan import plan_study
from bench.report.tables import build_tables, first_stage_table
from report_rows import row, study, write


def tables_for(tmp_path, data, **kw):
    path = write(tmp_path / "runs", data)
    df, _ = load([str(path)])
    plan = plan_study(df, kw.pop("kind", "auto"), kw.pop("rows", None), kw.pop("cols", None), kw.pop("metric", None),
                      kw.pop("split_by", []), kw.pop("err", "se"))
    return plan, *build_tables(df, plan, study_tables=(first_stage_table,))


# ---------------------------------------------------------------- pivoting

def test_pivot_places_row_values_in_their_cells(tmp_path):
    rows = [row(sampler=s, steps=n, fid=f) for (s, n), f in
            {("ddim", 10): 12.3456, ("ddim", 20): 7.891, ("heun", 10): 9.5, ("heun", 20): 8.004}.items()]
    plan, tables, csvs = tables_for(tmp_path, rows, metric=["fid"])
    assert (plan.kind, plan.rows, plan.cols) == ("steps", ["sampler"], ["num_inference_steps"])
    t = tables[0]
    assert t.header == ["sampler \\ steps", "10", "20"]
    assert [[c.text for c in r] for r in t.body] == [["ddim", "12.35", "7.89"], ["heun", "9.50", "8.00"]]
    assert [[c.best for c in r] for r in t.body] == [[False, False, True], [False, True, False]]


def test_repeats_aggregate_to_mean_std_n(tmp_path):
    rows = [row(steps=10, seed=s, fid=f) for s, f in [(0, 10.0), (1, 12.0), (2, 14.5)]] + [row(steps=20, fid=6.0)]
    _, tables, csvs = tables_for(tmp_path, rows, metric=["fid"])
    sd = statistics.stdev([10.0, 12.0, 14.5])
    assert tables[0].header == ["steps", "FID ↓"]  # one factor: rows of it
    # the default ± is the standard error of the mean over the cell's seeds; n differs across cells → shown
    assert tables[0].body[0][1].text == f"{12.1666666:.2f} ± {sd / 3 ** 0.5:.2f} (n=3)"
    assert tables[0].body[1][1].text == "6.00 (n=1)"
    c = csvs["fid"].set_index("num_inference_steps")
    assert c.loc[10, "fid"] == pytest.approx(36.5 / 3) and c.loc[10, "fid_std"] == pytest.approx(sd)
    assert c.loc[10, "n"] == 3 and c.loc[10, "fid_se"] == pytest.approx(sd / 3 ** 0.5)
    _, std_tables, _ = tables_for(tmp_path, rows, metric=["fid"], err="std")
    assert std_tables[0].body[0][1].text == f"{12.1666666:.2f} ± {sd:.2f} (n=3)"


def test_best_marks_higher_for_is_and_ties(tmp_path):
    rows = [row(sampler="ddim", steps=10, **{"is": 9.001}), row(sampler="heun", steps=10, **{"is": 9.004}),
            row(sampler="ddpm", steps=10, **{"is": 5.0})]
    _, tables, _ = tables_for(tmp_path, rows, metric=["is"])
    assert {r[0].text: r[1].best for r in tables[0].body} == {"ddim": True, "ddpm": False, "heun": True}


def test_equal_values_on_a_rounding_tie_stay_tied_whatever_their_last_bits():
    """0.3125 shown with 3 decimals: a copy 1 ulp above it rounds to 0.313 by itself, yet both are shown 0.312."""
    from bench.report.stats import best

    tie, above = 0.3125, math.nextafter(0.3125, 1.0)
    assert round(above, 3) != round(tie, 3)  # the case: plain rounding splits them
    assert best([tie, above, 0.2], [None] * 3, "precision", 3) == {0, 1}
    assert best([0.3126, tie, 0.2], [None] * 3, "precision", 3) == {0}  # a real difference is still told apart


def test_one_factor_study_gives_one_metrics_table(tmp_path):
    plan, tables, csvs = tables_for(tmp_path, study("guidance"))
    assert (plan.kind, plan.rows, plan.cols) == ("guidance", ["guidance_scale"], [])
    assert len(tables) == 1 and tables[0].header[0] == "guidance scale"
    assert tables[0].header[1:] == ["FID ↓", "KID ×10³ ↓", "IS ↑", "latency p50 (ms/img) ↓"]
    assert [r[0].text for r in tables[0].body] == ["0", "1", "1.5", "2", "3", "5", "7.5"]
    assert set(csvs) == {"fid", "kid", "is", "latency_p50"}


@pytest.mark.parametrize("kind,rows,cols", [("eta", ["eta"], ["num_inference_steps"]),
                                            ("distill", ["method"], ["num_inference_steps"]),
                                            ("steps", ["sampler"], ["num_inference_steps"])])
def test_auto_kind(tmp_path, kind, rows, cols):
    plan, _, _ = tables_for(tmp_path, study(kind))
    assert (plan.kind, plan.rows, plan.cols) == (kind, rows, cols)


def test_unplanned_varying_factor_is_added_or_refused(tmp_path):
    rows = [row(steps=10, timestep_spacing=s, fid=f) for s, f in [("leading", 9.0), ("trailing", 8.0)]]
    plan, tables, _ = tables_for(tmp_path, rows, metric=["fid"])
    assert plan.rows == ["timestep_spacing"] and len(tables[0].body) == 2  # never averaged together
    with pytest.raises(ReportError, match="timestep_spacing varies within table cells"):
        tables_for(tmp_path, rows, rows=["sampler"], cols=["num_inference_steps"])


def test_failed_cells_are_marked_not_averaged(tmp_path):
    _, tables, _ = tables_for(tmp_path, study("steps"), metric=["fid"])
    euler = next(r for r in tables[0].body if r[0].text == "euler")
    assert [c.text for c in euler[1:]] == ["failed", "—", "—", "—"]


# ---------------------------------------------------------------- formatting

def test_decimals_are_fixed_per_column():
    assert decimals("fid", [123.4, 0.5]) == 2
    assert decimals("swd", [0.5, 0.0123]) == 3  # 3 significant digits of the largest, 2 of the smallest
    assert decimals("mmd", [0.00042]) == 6


def test_outputs_markdown_latex_csv_html(tmp_path):
    write(tmp_path / "runs", study("steps", seeds=(0, 1)), grids=True)
    out = tmp_path / "rep"
    assert main([str(tmp_path / "runs"), "--out", str(out), "--metric", "fid"]) == 0
    md, tex = (out / "report.md").read_text(), (out / "report.tex").read_text()
    df, _ = load([str(tmp_path / "runs")])
    ok = df[(df.status == "ok") & (df.sampler == "dpmpp") & (df.num_inference_steps == 5)]
    mean, sd = ok.fid.mean(), ok.fid.std()
    assert f"**{mean:.2f} ± {sd / 2 ** 0.5:.2f}**" in md  # dpmpp is the best at 5 steps in the fixture; ± = SE
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\textbf{", "$\\pm$", "\\begin{tabular}{lrrrr}"):
        assert rule in tex
    assert "Published (CIFAR-10, Inception FID — shapes only, not comparable values)" in md
    assert "## Failed cells" in md and "NonFiniteError" in md
    assert f"bench-report {tmp_path / 'runs'} --out {out} --metric fid" in md  # regenerating command
    back = pd.read_csv(out / "table_fid.csv")
    got = back[(back.sampler == "dpmpp") & (back.num_inference_steps == 5)].iloc[0]
    # CSVs carry 6 significant digits (stable across machines; full precision stays in results.jsonl)
    assert got.fid == float(f"{mean:.6g}") and got.fid_std == pytest.approx(sd, rel=1e-5) and got.n == 2
    html = (out / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == 3 and "<b>" in html
    for stem in ("fid_vs_nfe", "fid_vs_latency", "grids"):
        assert (out / "plots" / f"{stem}.png").stat().st_size > 1000 and (out / "plots" / f"{stem}.pdf").exists()


def test_regeneration_is_byte_for_byte(tmp_path):
    write(tmp_path / "runs", study("eta"), grids=True)
    out = tmp_path / "rep"
    args = [str(tmp_path / "runs"), "--out", str(out)]
    assert main(args) == 0
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(args) == 0
    second = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    for name in first:  # tables must match; plots match too on one machine (dates stripped)
        assert first[name] == second[name], name


def test_split_by_gives_titled_tables(tmp_path):
    rows = [row(steps=10, fid=9.0), row(steps=20, fid=7.0),
            row(steps=10, seed=1, fid=3.0, feature_net="inception", feature_net_hash="ffff")]
    _, tables, csvs = tables_for(tmp_path, rows, metric=["fid"], split_by=["feature_net_hash"])
    assert [t.title for t in tables] == ["FID by steps — feature_net_hash=a1b2c3d4e5f6",
                                         "FID by steps — feature_net_hash=ffff"]
    assert [[c.text for c in r] for r in tables[1].body] == [["10", "3.00"]]
    assert list(csvs["fid"].columns) == ["feature_net_hash", "num_inference_steps", "fid", "fid_std", "fid_se",
                                         "fid_ci95", "n"]


def test_split_by_shows_a_metric_only_in_the_splits_that_have_it(tmp_path):
    """The families study: CLIP score exists on shapes, not on digits; with --split-by data the shapes tables show
    it and the digits tables leave it out (a note says so); missing inside a split that has it is still refused.
    Latent rows add the first-stage table (one row per model and VAE)."""
    shapes = {"data": "shapes", "feature_net": "clip", "feature_net_hash": "c11p", "ref_hash": "5a5a"}
    vae = {"vae_key": "v4e", "latent_shape": [4, 4, 4], "vae_num_params": 43421, "vae_train_steps": 1000,
           "vae_psnr": 28.81, "vae_rfid": 0.5123, "real_fid": 0.3001, "vae_rfid_n": 360}
    rows = [row(steps=n, model=m, **(vae if m == "latent_unet" else {})) for m in ("unet", "latent_unet")
            for n in (5, 10)] + [row(steps=n, model=m, clip_score=20.0 + n, **shapes) for m in ("unet", "text_unet")
                                 for n in (5, 10)]
    plan, tables, csvs = tables_for(tmp_path, rows, kind="steps", rows=["model"], cols=["num_inference_steps"],
                                    metric=["fid", "clip_score"], split_by=["data"])
    assert [t.title for t in tables] == [
        "FID ↓ by model × steps — data=digits", "First stage (latent families): the VAE's reconstructions of the "
        "held-out split — data=digits", "FID ↓ by model × steps — data=shapes", "CLIP score ↑ by model × steps — "
        "data=shapes"]
    assert plan.notes == ["clip_score: not in the rows of data=digits, so their tables leave it out"]
    assert [[c.text for c in r] for r in tables[1].body] == [
        ["latent_unet", "v4e", "[4, 4, 4]", "43421", "1000", "28.81", "0.512", "0.300", "360"]]
    assert [[c.text for c in r] for r in tables[3].body] == [["text_unet", "25.00", "30.00"],
                                                             ["unet", "25.00", "30.00"]]
    assert set(csvs["clip_score"]["data"]) == {"shapes"}
    rows[-1].pop("clip_score")
    with pytest.raises(ReportError, match=r"^column clip_score missing in 1 of 8 ok rows \(e\.g\. data=shapes, "
                                          r"model=text_unet, num_inference_steps=10\)"):
        tables_for(tmp_path, rows, kind="steps", rows=["model"], cols=["num_inference_steps"],
                   metric=["fid", "clip_score"], split_by=["data"])


def test_a_row_that_says_why_it_has_no_metric_shows_a_dash(tmp_path):
    """The unconditional cell of a text-to-image guidance study has no caption, so no CLIP score, and says so
    (clip_score_skipped): its cell is '—' with the reason in a note. A row missing it without a reason is refused."""
    rows = [row(name="guidance", guidance_scale=g, clip_score=90.0 + g) for g in (1.0, 2.0)]
    rows.append(row(name="guidance", guidance_scale=0.0, clip_score_skipped="no labels (unconditional samples have "
                                                                              "no caption)"))
    plan, tables, _ = tables_for(tmp_path, rows, metric=["fid", "clip_score"])
    assert [[c.text for c in r][2] for r in tables[0].body] == ["—", "91.00", "92.00"]
    assert plan.notes == ["clip_score: — where the row records why it has none (guidance_scale=0: no labels "
                          "(unconditional samples have no caption))"]
    rows[-1].pop("clip_score_skipped")
    with pytest.raises(ReportError, match=r"^column clip_score missing in 1 of 3 ok rows \(e\.g\. guidance_scale=0\)"):
        tables_for(tmp_path, rows, metric=["fid", "clip_score"])


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("setting,value", [("feature_net_hash", "ffff"), ("num_samples", 1000), ("resize", "bicubic"),
                                           ("ref_hash", "eeee")])
def test_mixed_metric_settings_refused(tmp_path, setting, value):
    rows = [row(steps=10, fid=9.0), row(steps=20, fid=7.0, **{setting: value})]
    with pytest.raises(ReportError, match=f"column fid mixes {setting} .*--split-by {setting}"):
        tables_for(tmp_path, rows, metric=["fid"])


@pytest.mark.parametrize("setting", ["prdc_n_gen", "prdc_n_ref"])
def test_precision_refuses_cells_scored_at_other_set_sizes(tmp_path, setting):
    """k-NN balls shrink as a set grows: precision at N = 200 generated is not comparable with N = 500."""
    prdc = {"precision": 0.7, "pr_k": 3, "prdc_n_gen": 500, "prdc_n_ref": 5500}
    rows = [row(steps=10, **prdc), row(steps=20, **{**prdc, "precision": 0.6, setting: 200})]
    with pytest.raises(ReportError, match=f"column precision mixes {setting} .*--split-by {setting}"):
        tables_for(tmp_path, rows, metric=["precision"])
    rows[1][setting] = prdc[setting]
    tables_for(tmp_path, rows, metric=["precision"])


def test_mixed_hardware_refused_for_latency(tmp_path):
    rows = [row(steps=10), row(steps=20, hardware="NVIDIA H100")]
    with pytest.raises(ReportError, match="column latency_p50 mixes hardware"):
        tables_for(tmp_path, rows, metric=["latency_p50"])


@pytest.mark.parametrize("content,msg", [
    ("", "empty results file"),
    ("\n\n", "empty results file"),
    ("a,b,c\n1,2,3\n", "not JSON Lines"),
    ('{"loss": 0.1, "step": 3}\n', "not a bench results row \\(missing schema_version, cell_key, status\\)"),
    ("[1, 2]\n", "not a bench results row"),
    ('{"cell_key": "a", "schema_version": 99, "status": "ok"}\n', "schema_version=99 is newer than this bench reads"),
])
def test_empty_or_foreign_file(tmp_path, capsys, content, msg):
    (tmp_path / "results.jsonl").write_text(content)
    out = tmp_path / "rep"
    assert main([str(tmp_path / "results.jsonl"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ReportError: ") and err.count("\n") == 1
    assert re.search(msg, err)
    assert not out.exists() and not list(tmp_path.glob(".rep*"))  # nothing written


def test_missing_metric_and_columns(tmp_path):
    rows = [row(steps=10), row(steps=20)]
    with pytest.raises(ReportError, match="no ok row has metric 'clip_score'"):
        tables_for(tmp_path, rows, metric=["clip_score"])
    partial = [row(steps=10), {k: v for k, v in row(steps=20).items() if k != "fid"}]
    with pytest.raises(ReportError, match="column fid missing in 1 of 2 ok rows"):
        tables_for(tmp_path, partial, metric=["fid"])
    plan, _, _ = tables_for(tmp_path, partial)  # auto: skip the incomplete metric, say so
    assert "fid" not in plan.metrics and any("fid skipped" in n for n in plan.notes)
    with pytest.raises(ReportError, match="column 'solver' is not in the result rows"):
        tables_for(tmp_path, rows, rows=["solver"])


def test_all_failed_and_bad_paths(tmp_path):
    write(tmp_path / "runs", [row(status="failed")])
    with pytest.raises(ReportError, match="no row has status 'ok'"):
        build_report([str(tmp_path / "runs")], str(tmp_path / "rep"))
    with pytest.raises(ReportError, match="no such file or directory"):
        build_report([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="directory has no results.jsonl"):
        build_report([str(tmp_path / "empty")])


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    write(tmp_path / "runs", [row(steps=10), row(steps=20)])
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("x = 1\n")
    with pytest.raises(ReportError, match="not a bench report directory"):
        build_report([str(tmp_path / "runs")], str(tmp_path / "src"), plots=False)
    assert (tmp_path / "src" / "main.py").read_text() == "x = 1\n"


def test_later_ok_row_supersedes_failed_attempt_and_where_filters(tmp_path):
    failed = row(steps=10, status="failed")
    ok = row(steps=10, fid=5.0, cell_key=failed["cell_key"])  # the same cell re-run after a failure
    rows = [failed, ok, row(steps=20, fid=4.0), row(sampler="heun", steps=20, fid=3.0)]
    _, tables, _ = tables_for(tmp_path, rows, metric=["fid"])
    assert [c.text for c in tables[0].body[0]] == ["ddim", "5.00", "4.00"]
    report, _ = build_report([str(tmp_path / "runs")], str(tmp_path / "rep"), plots=False)
    assert report.failed is None
    report, _ = build_report([str(tmp_path / "runs")], str(tmp_path / "rep"), where=["sampler=heun"], plots=False)
    assert len(report.tables[0].body) == 1 and report.tables[0].body[0][1].text == "3.00"
    report, _ = build_report([str(tmp_path / "runs")], str(tmp_path / "rep"), where=["sampler!=heun"], plots=False)
    # KEY!=VALUE drops those rows: ddim alone, so a one-factor table of its steps
    assert [[c.text for c in r[:2]] for r in report.tables[0].body] == [["10", "5.00"], ["20", "4.00"]]


def test_report_config_file(tmp_path):
    write(tmp_path / "runs", study("eta"))
    cfg = tmp_path / "r.yaml"
    cfg.write_text("rows: [num_inference_steps]\ncols: [eta]\nmetric: [fid]\ntitle: My eta study\n")
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "rep"), "--config", str(cfg), "--no-plots"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.startswith("# My eta study") and "| steps \\ η" in md
    assert not (tmp_path / "rep" / "table_kid.csv").exists()


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    write(tmp_path / "runs", study("guidance"))
    out = tmp_path / "rep"
    assert main([str(tmp_path / "runs"), "--out", str(out), "--wandb", "--no-plots"]) == 0
    runs = list((out / "wandb").rglob("*.wandb"))
    assert runs and runs[0].stat().st_size > 0
    # the metric-vs-guidance tables also become interactive W&B line charts (their data table is in the run)
    charts = list((out / "wandb").rglob("files/media/table/chart/fid_vs_guidance_scale_table_*.table.json"))
    assert charts, sorted(p.name for p in (out / "wandb").rglob("*.table.json"))
    import json

    t = json.loads(charts[0].read_text())
    assert t["columns"] == ["guidance_scale", "fid", "series"] and len(t["data"]) >= 2


def test_wandb_line_charts_one_line_per_series():
    import pandas as pd

    from bench.report import _wandb_line

    seen = {}

    class Fake:
        class plot:
            @staticmethod
            def line(table, x, y, stroke=None, title=""):
                seen.update(table=table, x=x, y=y, stroke=stroke)
                return "chart"

        Table = staticmethod(lambda dataframe: dataframe)

    df = pd.DataFrame({"sampler": ["ddim", "ddim", "heun"], "num_inference_steps": [5, 10, 5],
                       "fid": [2.0, 1.0, 1.5], "fid_std": [0.1, 0.1, 0.1]})
    assert _wandb_line(Fake, "fid", df) == {"chart/fid_vs_num_inference_steps": "chart"}
    assert seen["x"] == "num_inference_steps" and seen["y"] == "fid" and seen["stroke"] == "series"
    assert list(seen["table"]["series"]) == ["ddim", "ddim", "heun"]
    assert _wandb_line(Fake, "fid", pd.DataFrame({"sampler": ["ddim"], "fid": [1.0]})) is None  # no numeric axis


def test_two_sweeps_or_models_are_not_averaged_as_seeds(tmp_path):
    rows = [row(name="a", steps=10, fid=9.0), row(name="b", steps=10, fid=5.0),
            row(name="a", steps=20, fid=7.0, model_key="other"), row(name="a", steps=20, fid=6.0)]
    plan, tables, _ = tables_for(tmp_path, rows, metric=["fid"])
    assert set(plan.rows) >= {"name", "model_key"}
    assert all("±" not in c.text for t in tables for r in t.body for c in r)


def test_reads_rows_written_by_bench_results(tmp_path):
    results = pytest.importorskip("bench.results")
    for r in study("eta"):
        r.pop("schema_version")
        assert results.append_row(tmp_path / "sweep", r)
    report, _ = build_report([str(tmp_path / "sweep")], str(tmp_path / "rep"), plots=False)
    assert [t.name for t in report.tables] == ["fid", "kid", "is", "latency_p50"]
    assert report.tables[0].header == ["η \\ steps", "10", "20", "50"]


def test_ci95_option(tmp_path):
    rows = [row(steps=10, seed=s, fid=f) for s, f in [(0, 10.0), (1, 12.0), (2, 14.0)]] + \
        [row(steps=20, seed=s, fid=f) for s, f in [(0, 5.0), (1, 6.0), (2, 7.0)]]
    write(tmp_path / "runs", rows)
    report, out = build_report([str(tmp_path / "runs")], str(tmp_path / "rep"), metric="fid", err="ci95", plots=False)
    half = 4.302652729911275 * 2.0 / 3 ** 0.5  # t(0.975, 2) · s / √n
    assert report.tables[0].body[0][1].text == f"12.00 ± {half:.2f}"
    assert "95% CI" in report.tables[0].notes[0]
    assert pd.read_csv(out / "table_fid.csv")["fid_ci95"][0] == pytest.approx(half, rel=1e-5)


# ---------------------------------------------------------------- honest uncertainty

def test_subset_and_split_spreads_are_not_shown_as_error_bars(tmp_path):
    """One seed block: KID's std over random subsets (e.g. '1.65 ± 80.01') and IS's over splits are no ± ."""
    rows = [row(sampler=s, steps=10, kid=0.00165, kid_std=0.08, kid_std_over="subsets", **{"is": 9.0, "is_std": 0.5})
            for s in ("ddim", "dpmpp")]
    _, tables, csvs = tables_for(tmp_path, rows, metric=["kid", "is"])
    texts = [c.text for t in tables for r in t.body for c in r[1:]]
    assert texts and not any("±" in t for t in texts), texts
    assert "no ± (KID's subset and IS's split spreads are not error bars)" in tables[0].notes[0]
    # with seed blocks, the row's spread is over seeds: ± = std / sqrt(blocks) (the standard error)
    rows = [row(sampler="ddim", steps=10, kid=0.002, kid_std=0.0004, kid_std_over="seeds", kid_repeats=4)]
    _, tables, _ = tables_for(tmp_path, rows + [row(sampler="dpmpp", steps=10)], metric=["kid"])
    assert tables[0].body[0][1].text == "2.00 ± 0.20" and "standard error over the cell's independent seed blocks" \
        in tables[0].notes[0]


def test_best_is_not_bolded_alone_within_the_noise(tmp_path):
    """Two cells within 2 standard errors are a tie: both bold; a cell far outside is not."""
    near = [row(sampler="ddim", steps=10, fid=1.00, fid_std=0.10, fid_std_over="seeds", fid_repeats=4),
            row(sampler="euler", steps=10, fid=1.12, fid_std=0.10, fid_std_over="seeds", fid_repeats=4),
            row(sampler="ddpm", steps=10, fid=2.00, fid_std=0.10, fid_std_over="seeds", fid_repeats=4)]
    _, tables, _ = tables_for(tmp_path, near, metric=["fid"])
    bold = {r[0].text: r[1].best for r in tables[0].body}
    assert bold == {"ddim": True, "euler": True, "ddpm": False}
    # latency: identical cells measured with their batch IQR tie as well
    lat = [row(sampler=s, steps=10, latency_p50=v, latency_iqr=0.0004, latency_batches=9)
           for s, v in (("ddim", 0.0059), ("euler", 0.0060), ("ddpm", 0.0120))]
    _, tables, _ = tables_for(tmp_path, lat, metric=["latency_p50"])
    assert {r[0].text: r[1].best for r in tables[0].body} == {"ddim": True, "euler": True, "ddpm": False}
    assert "within 2 standard errors of it (a tie)" in tables[0].notes[0]


def test_toy2d_report_has_no_inception_reference_tables_and_captions_match(tmp_path):
    toy = [row(sampler=s, steps=n, data="toy2d-moons", fid=None, kid=None, kid_std=None, is_std=None,
               feature_net="none", swd=0.1 / n, mmd=0.01 / n, **{"is": None})
           for s in ("ddim", "dpmpp") for n in (10, 50)]
    write(tmp_path / "toy", toy)
    report, out = build_report([str(tmp_path / "toy")], str(tmp_path / "rep"), metric="swd,mmd")
    assert report.published == [] and "CIFAR" not in (out / "report.md").read_text()
    caption = next(f.caption for f in report.figures if f.stem.startswith("swd_vs_nfe"))
    assert "one seed per point: no error bars" in caption and "std over seeds" not in caption
    steps, _ = build_report([str(write(tmp_path / "img", study("steps")).parent)], str(tmp_path / "rep2"),
                            metric="fid")
    assert steps.published  # image studies keep the published shapes beside them


def test_duplicate_cell_keys_with_other_scores_are_refused_in_either_order(tmp_path):
    """Before: rows of one cell_key from two files were collapsed before the mixed-settings guard (the
    last file won, so the argument order changed the table). Now a difference in a score or its provenance is an
    error whichever file comes first; a difference in cost only keeps the earliest row, whatever the order."""
    base = study("guidance")
    write(tmp_path / "a", base)
    other = [dict(r, feature_net_hash="0123456789abcdef") if r["guidance_scale"] == 3 else r for r in base]
    write(tmp_path / "b", other)
    for order in ((tmp_path / "a", tmp_path / "b"), (tmp_path / "b", tmp_path / "a")):
        with pytest.raises(ReportError, match=r"appears twice with different feature_net_hash"):
            load([str(p) for p in order])
    later = [dict(r, latency_p50=r["latency_p50"] * 3, created_at="2026-01-01T00:00:00Z") for r in base]
    write(tmp_path / "c", later)
    ab, ba = load([str(tmp_path / "a"), str(tmp_path / "c")])[0], load([str(tmp_path / "c"), str(tmp_path / "a")])[0]
    assert list(ab["latency_p50"]) == list(ba["latency_p50"]) == list(load([str(tmp_path / "a")])[0]["latency_p50"])


def test_classifier_scale_is_a_cell_coordinate(tmp_path):
    """guidance_methods rows: CFG scale × classifier scale; rows differing in classifier_scale are never averaged."""
    rows = [row(name="guidance_methods", steps=20, guidance_scale=g, classifier_scale=c, fid=10 + g + 2 * c)
            for g in (0.0, 3.0) for c in (0.0, 2.0)]
    plan, tables, csvs = tables_for(tmp_path, rows, metric=["fid"])
    assert (plan.kind, plan.rows) == ("guidance", ["guidance_scale", "classifier_scale"])
    assert tables[0].header[:2] == ["guidance scale", "classifier scale"]
    assert [[c.text for c in r[:3]] for r in tables[0].body] == [["0", "0", "10.00"], ["0", "2", "14.00"],
                                                                  ["3", "0", "13.00"], ["3", "2", "17.00"]]


# ---------------------------------------------------------------- one configuration per table cell

# Settings outside the report's factor columns that change the numbers: rows differing only in one of them once fell
# into one table cell, shown as "mean ± se (over the n seeds)" although every row had seed 0.
UNTABULATED = [("sampler.solver_order", 2, 3), ("sampler.use_karras_sigmas", False, True),
               ("prompts.content", "04ab7d", "9f1c2e"), ("prompts.negative_prompt", "", "blurry")]


@pytest.mark.parametrize("setting,a,b", UNTABULATED)
def test_rows_differing_in_a_key_setting_are_never_pooled(tmp_path, setting, a, b):
    rows = [row(sampler="dpmpp", steps=20, fid=51.55, settings={setting: a}),
            row(sampler="dpmpp", steps=20, fid=51.89, settings={setting: b}),
            row(sampler="ddim", steps=20, fid=60.0, settings={setting: a})]
    plan, tables, csvs = tables_for(tmp_path, rows, metric=["fid"])
    assert plan.rows == ["sampler", setting] and f"{setting} varies too, so it was added to the rows" in plan.notes
    t = tables[0]
    assert t.header == ["sampler", setting, "FID ↓"]
    assert [[c.text for c in r] for r in t.body] == [["ddim", str(a), "60.00"], ["dpmpp", str(a), "51.55"],
                                                     ["dpmpp", str(b), "51.89"]]
    assert "over the n seeds" not in t.notes[0] and "one seed per cell" in t.notes[0]
    assert list(csvs["fid"]["n"]) == [1, 1, 1]
    # given rows that leave the setting out, the report refuses in one line naming it
    with pytest.raises(ReportError, match=rf"^{setting} varies within table cells \({a}, {b}\) but is not in "
                                          rf"--rows/--cols/--split-by; add it or filter with --where "
                                          rf"{setting}=\.\.\.$"):
        tables_for(tmp_path, rows, rows=["sampler"], cols=[], metric=["fid"])
    # --where on the setting picks one configuration
    report, _ = build_report([str(tmp_path / "runs")], str(tmp_path / "rep"), where=[f"{setting}={b}"], plots=False)
    assert len(report.tables[0].body) == 1 and report.tables[0].body[0][1].text == "51.89"


def test_seed_blocks_of_one_configuration_are_pooled(tmp_path):
    rows = [row(sampler="dpmpp", steps=20, seed=s, fid=f, settings={"sampler.solver_order": 3, "metric.seed": 0})
            for s, f in [(0, 51.55), (1, 51.89)]]
    plan, tables, csvs = tables_for(tmp_path, rows, metric=["fid"])
    assert plan.notes == []
    assert tables[0].body[0][1].text == "51.72 ± 0.17" and "over the n seeds" in tables[0].notes[0]
    assert list(csvs["fid"]["n"]) == [2]


def test_rows_differing_in_metric_seed_alone_are_not_seeds(tmp_path):
    rows = [row(steps=20, fid=f, settings={"metric.seed": s}) for s, f in [(0, 51.55), (1, 51.89)]]
    plan, tables, _ = tables_for(tmp_path, rows, metric=["fid"])
    assert "metric.seed" in plan.rows and [r[-1].text for r in tables[0].body] == ["51.55", "51.89"]


def test_older_rows_are_told_apart_by_the_settings_they_record(tmp_path):
    """Rows written before key_settings: a recorded setting (the negative prompt, the prompt file's hash) that
    differs inside a cell becomes a row factor; a difference they do not record (same seed, other cell keys) is
    refused rather than averaged as seeds."""
    rows = [row(sampler="dpmpp", steps=20, fid=51.55, negative_prompt=""),
            row(sampler="dpmpp", steps=20, fid=51.89, negative_prompt="blurry")]
    plan, tables, _ = tables_for(tmp_path, rows, metric=["fid"])
    assert plan.rows == ["negative_prompt"] and [[c.text for c in r] for r in tables[0].body] == [
        ["", "51.55"], ["blurry", "51.89"]]
    unrecorded = [row(sampler="dpmpp", steps=20, fid=51.55, solver_order_not_in_row=2),
                  row(sampler="dpmpp", steps=20, fid=51.89, solver_order_not_in_row=3)]
    with pytest.raises(ReportError, match=r"^2 rows of one table cell \(name=scheduler_steps\) have seed 0 but "
                                          r"other cell keys \(\w+, \w+\): they differ in a setting the rows do not "
                                          r"record"):
        tables_for(tmp_path, unrecorded, metric=["fid"])
    # older rows with other seeds stay seed blocks, beside a newer row of the same factors
    mixed = [row(sampler="dpmpp", steps=20, seed=0, fid=51.55),
             row(sampler="dpmpp", steps=20, seed=1, fid=51.89, settings={"sampler.solver_order": 2})]
    _, tables, _ = tables_for(tmp_path, mixed, metric=["fid"])
    assert tables[0].body[0][1].text == "51.72 ± 0.17"


def test_a_new_metric_is_one_entry_of_the_metric_spec(tmp_path, monkeypatch):
    """Label, direction, decimals, scale and 'tabulate by default' come from bench.metric_spec alone: the report,
    the tracker and the console summary all pick up a new entry."""
    from bench.metric_spec import METRICS, Metric
    from bench.summary import summary_columns
    from bench.tracking import split_row

    monkeypatch.setitem(METRICS, "lpips", Metric("LPIPS ×10²", "quality", decimals=1, scale=100.0, default=True,
                                                 console=True, role="distance"))
    rows = [row(steps=n, lpips=v) for n, v in [(10, 0.2531), (20, 0.1875)]]
    plan, tables, csvs = tables_for(tmp_path, rows)
    assert "lpips" in plan.metrics and tables[0].header[-1] == "LPIPS ×10² ↓"
    assert [(r[0].text, r[-1].text, r[-1].best) for r in tables[0].body] == [("10", "25.3", False),
                                                                             ("20", "18.8", True)]
    assert list(csvs["lpips"]["lpips"]) == [0.2531, 0.1875]  # raw units in the CSV
    settings, measured = split_row({"cell_key": "k", "eta": 0.5, "lpips": 0.2, "lpips_std": 0.01})
    assert measured == {"lpips": 0.2, "lpips_std": 0.01} and settings == {"cell_key": "k", "eta": 0.5}
    assert "lpips" in summary_columns()
