"""Each sweep file in sweeps/ runs through the real CLI (shrunk: smoke model, 2 steps) with one row per cell, and
tracker=wandb leaves offline runs whose files hold the logged rows and the ablation table."""
import json

import pytest

from test_run import bench, rows

# sweep -> (shrinking overrides, expected cell coordinates)
SWEEPS = {
    "scheduler_steps": (["sampling.num_inference_steps=2"],
                        {("ddpm",), ("ddim",), ("dpmpp",), ("euler",), ("heun",), ("unipc",)}),
    "ddim_eta": (["sampling.num_inference_steps=2"], {(0.0,), (0.5,), (1.0,)}),
    "guidance": (["sampling.num_inference_steps=2"], {(0.0,), (1.0,), (1.5,), (2.0,), (3.0,), (5.0,), (7.5,)}),
    # a 2 x 2 corner of the 4 x 4 grid (command-line sweeps replace the file's), with a tiny classifier
    "guidance_methods": (["sampling.num_inference_steps=2", "sampling.guidance_scale=0,3",
                          "sampling.classifier_scale=0,2", "classifier.max_steps=20",
                          "classifier.block_out_channels=[8,16]"],
                         {(0.0, 0.0), (0.0, 2.0), (3.0, 0.0), (3.0, 2.0)}),
    # every family at one step count, tiny (smoke budget: each family's own shrink, conf/experiment_model/; a 20-step
    # classifier, 256 images)
    "families": (["sampling.num_inference_steps=2", "classifier.max_steps=20",
                  "classifier.block_out_channels=[8,16]", "data.num_train=256", "metric.num_reference=256"],
                 {("digits", "unet", 0.0), ("digits", "dit", 0.0), ("digits", "latent_unet", 0.0),
                  ("digits", "latent_dit", 0.0), ("digits", "unet", 2.0), ("shapes", "unet", 0.0),
                  ("shapes", "text_unet", 0.0)}),
}
COORD = {"scheduler_steps": ("sampler",), "ddim_eta": ("eta",), "guidance": ("guidance_scale",),
         "guidance_methods": ("guidance_scale", "classifier_scale"),
         "families": ("data", "model", "classifier_scale")}


def coord(row: dict, key: str):
    return row[key].split("-")[0] if key == "data" else row[key]  # data: its name, not the whole id


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("sweeps")  # one model cache for all sweeps: the smoke model trains once


@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_sweep_file_runs_one_row_per_cell(shared, sweep):
    shrink, expected = SWEEPS[sweep]
    tracker = "tracker=wandb" if sweep == "guidance" else "tracker=none"
    bench(shared, "-m", f"sweep={sweep}", "experiment=smoke", tracker, "sampling.num_samples=32", *shrink)
    got = rows(shared / "runs" / sweep / "results.jsonl")
    assert all(r["status"] == "ok" and r["name"] == sweep for r in got)
    assert {tuple(coord(r, c) for c in COORD[sweep]) for r in got} == expected and len(got) == len(expected)
    if sweep == "guidance":  # CFG doubles the real model calls, 0 and 1 do not
        nfe = {r["guidance_scale"]: r["nfe"] for r in got}
        assert nfe[0.0] == nfe[1.0] == 2 and nfe[3.0] == 4
        runs = sorted((shared / "runs" / sweep / "wandb").glob("offline-run-*"))
        cells = [json.loads(p.read_text()) for p in
                 (shared / "runs" / sweep / "wandb").glob("offline-run-*/files/media/table/cell_*.table.json")]
        assert len(cells) == len(expected) and len(runs) == len(expected) + 1  # + the ablation run
        logged = {dict(zip(t["columns"], t["data"][0]))["cell_key"]: dict(zip(t["columns"], t["data"][0]))
                  for t in cells}
        for r in got:
            assert logged[r["cell_key"]]["fid"] == pytest.approx(r["fid"])
        (abl,) = (shared / "runs" / sweep / "wandb").glob("offline-run-*/files/media/table/ablation_*.table.json")
        t = json.loads(abl.read_text())
        assert sorted(row[t["columns"].index("cell_key")] for row in t["data"]) == sorted(r["cell_key"] for r in got)
    if sweep == "guidance_methods":  # same seeds; the classifier's calls are counted apart from the model's
        cost = {(r["guidance_scale"], r["classifier_scale"]): (r["nfe"], r["nfe_classifier"]) for r in got}
        assert cost == {(0.0, 0.0): (2, 0), (0.0, 2.0): (2, 2), (3.0, 0.0): (4, 0), (3.0, 2.0): (4, 2)}
        assert len({r["classifier_key"] for r in got if r["classifier_scale"]}) == 1  # trained once
    if sweep == "families":  # one training budget; the latent families share one VAE and record it
        assert len({r["train_steps"] for r in got}) == 1 and len({r["model_key"] for r in got}) == 6
        latent = [r for r in got if r["model"].startswith("latent_")]
        assert len({r["vae_key"] for r in latent}) == 1 and all(r["latent_shape"] == [4, 4, 4] for r in latent)
        assert all(r["vae_rfid"] > 0 and r["vae_rfid_n"] > 0 for r in latent)
        (guided,) = [r for r in got if r["classifier_scale"]]  # unconditional + classifier, counted apart
        assert guided["guidance_scale"] == 0 and guided["nfe"] == guided["nfe_classifier"] == 2
        assert guided["classifier_num_params"] > 0 and all(r["classifier_num_params"] == 0 for r in got
                                                           if r is not guided)
        shapes = [r for r in got if r["data"].startswith("shapes")]  # CLIP features and CLIP score
        assert len(shapes) == 2 and all(0 <= r["clip_score"] <= 100 for r in shapes)
        assert [r["text_encoder"] for r in shapes if r["model"] == "text_unet"][0].startswith("offline-tiny-clip#")
