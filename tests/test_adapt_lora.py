"""Adapters (bench/adapt): LoRA's algebra on the harness's families, its bad inputs, and an adapter trained, cached
and scored on classes its base model never saw."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.schema import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
OLD, NEW = "[0,1,2,3,4]", "[5,6,7,8,9]"
CONF = Path(__file__).resolve().parent.parent / "conf"
# model=text_unet (UNet2DConditionModel: LoRA through its own add_adapter) needs the captioned shapes
FAMILY = {"unet": "model=unet", "dit": "model=dit", "text_unet": "family=shapes_text_unet"}


def _base_and_lora(compose_cfg, *overrides):
    from bench.adapt import lora
    from bench.data import get_data_info
    from bench.models import build_model

    cfg = compose_cfg("adapter=lora", *overrides)
    info = get_data_info(cfg.data)
    torch.manual_seed(0)
    base = build_model(cfg.model, info).eval()
    adapted = lora.inject(cfg.adapter, copy.deepcopy(base)).eval()
    return cfg, info, base, adapted


@pytest.mark.parametrize("family", ["unet", "dit", "text_unet"])
def test_lora_leaves_the_output_unchanged_at_initialisation(compose_cfg, family):
    """B = 0 at initialisation: W x + (alpha / r) B A x = W x, bit for bit; A is not zero (the update can train)."""
    from bench.adapt import lora

    cfg, info, base, adapted = _base_and_lora(compose_cfg, FAMILY[family], "adapter.rank=4")
    if family == "text_unet":  # diffusers' PEFT mixin (add_adapter), not peft's inject_adapter_in_model
        assert type(lora.diffusers_net(adapted)).__name__ == "UNet2DConditionModel"
        assert hasattr(lora.diffusers_net(adapted), "add_adapter")
    x, t = torch.randn(6, *info.shape, generator=torch.Generator().manual_seed(1)), torch.linspace(1, 900, 6)
    y = torch.arange(6) % 10
    with torch.no_grad():
        assert torch.equal(base(x, t, y), adapted(x, t, y))
    names = [n for n, _ in adapted.named_parameters() if "lora_" in n]
    assert names and all(n not in dict(base.named_parameters()) for n in names)
    a = [p for n, p in adapted.named_parameters() if "lora_A" in n]
    b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert all(float(p.detach().abs().sum()) > 0 for p in a) and all(float(p.detach().abs().sum()) == 0 for p in b)


@pytest.mark.parametrize("family,rank", [("unet", 1), ("unet", 8), ("dit", 4), ("text_unet", 4)])
def test_trainable_parameters_are_r_times_in_plus_out_per_adapted_layer(compose_cfg, family, rank):
    from bench.adapt import trainable

    cfg, _, base, adapted = _base_and_lora(compose_cfg, FAMILY[family], f"adapter.rank={rank}")
    targets = tuple(cfg.adapter.target_modules)
    layers = [m for n, m in base.named_modules() if isinstance(m, nn.Linear) and n.endswith(targets)]
    assert len(layers) >= 4  # one attention block at least: to_q, to_k, to_v, to_out.0
    want = sum(rank * (m.in_features + m.out_features) for m in layers)
    got = sum(p.numel() for n, p in adapted.named_parameters() if n in set(trainable(adapted)))
    assert got == want
    assert all("lora_" in n for n in trainable(adapted))  # the base's weights are frozen


def test_conv_targets_add_the_resnet_convolutions(compose_cfg):
    """adapter.conv=true: conv1/conv2 of every ResNet block too, r (in k^2 + out) parameters each (A: k x k conv
    into r channels, B: 1 x 1 back out)."""
    cfg, _, base, adapted = _base_and_lora(compose_cfg, "adapter.conv=true", "adapter.rank=2")
    linear = sum(2 * (m.in_features + m.out_features) for n, m in base.named_modules()
                 if isinstance(m, nn.Linear) and n.endswith(tuple(cfg.adapter.target_modules)))
    convs = [m for n, m in base.named_modules() if isinstance(m, nn.Conv2d) and n.endswith(("conv1", "conv2"))]
    assert convs
    conv = sum(2 * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels) for m in convs)
    assert sum(p.numel() for p in adapted.parameters() if p.requires_grad) == linear + conv


@pytest.mark.parametrize("overrides,fragments", [
    (("adapter.rank=0",), ("adapter.rank=0 is not allowed", ">= 1")),
    (("adapter.rank=-3",), ("adapter.rank=-3",)),
    (("adapter.target_modules=[to_q,query]",), ("adapter.target_modules=['to_q', 'query']", "it has no query",
                                                 "to_k", "to_out.0", "conv1")),
    (("model=dit", "adapter.conv=true"), ("adapter.conv=True", "it has no conv1, conv2", "to_q")),
    (("adapter.classes=[5,5]",), ("adapter.classes=[5, 5]", "increasing")),
    (("adapter.classes=[9,10]",), ("adapter.classes=[9, 10]", "[0, 9]")),
    (("data.classes=[]",), ("data.classes=[]",)),
    (("distill=progressive", "sampling.num_inference_steps=4"),
     ("distill.method='progressive'", "none with adapter=lora")),
])
def test_bad_adapter_settings_are_one_line(compose_cfg, overrides, fragments):
    from bench.validate import validate

    with pytest.raises(ConfigError) as e:
        validate(compose_cfg("adapter=lora", *overrides))
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)


def test_bad_target_modules_through_the_cli(tmp_path, capsys, monkeypatch, bench_cache):
    from cli_runner import in_process

    out = tmp_path / "runs"
    code, err = in_process(capsys, monkeypatch, "experiment=smoke", "tracker=none", "adapter=lora",
                           "adapter.target_modules=[qkv]", f"out_dir={out}")
    assert code == 2 and err[-1].startswith("bench: error: adapter.target_modules=['qkv']"), err
    assert "to_q" in err[-1] and sum(line.startswith("bench: error:") for line in err) == 1
    assert not out.exists() or not list(out.rglob("results.jsonl"))


def test_no_adapter_leaves_every_key_as_it_was(compose_cfg):
    """adapter=none: its settings have no effect and are normalised away (the committed keys: tests/test_keys.py)."""
    from bench import keys

    plain = compose_cfg()
    assert keys.cell_key(plain) == keys.cell_key(keys.normalise(compose_cfg("adapter.rank=16", "adapter.lr=1")))
    assert "adapter" not in keys.cell_config(plain)
    assert keys.model_key(compose_cfg(f"data.classes={OLD}")) != keys.model_key(plain)
    # LoRA's settings have no effect on a full fine-tune: one cell, whatever rank a sweep sets
    full = keys.cell_key(keys.normalise(compose_cfg("adapter=full")))
    assert keys.cell_key(keys.normalise(compose_cfg("adapter=full", "adapter.rank=32"))) == full
    assert keys.cell_key(keys.normalise(compose_cfg("adapter=lora", "adapter.rank=32"))) != keys.cell_key(
        keys.normalise(compose_cfg("adapter=lora")))


# ----------------------------------------------------------------------------------- trained, cached, scored

@pytest.fixture(scope="module")
def adapted_rows(tmp_path_factory):
    """A base model on digits 0-4, a rank-2 LoRA on 5-9, scored on the new classes, on the old ones, at
    lora_scale 0, and the base itself on the old classes: the rows and the cache they share."""
    from hydra import compose, initialize_config_dir

    from bench.cell import run_cell
    from bench.schema import register

    register()
    root = tmp_path_factory.mktemp("adapt")
    common = ["experiment=smoke", "tracker=none", f"out_dir={root}/runs", f"cache_dir={root}/cache",
              f"data.classes={OLD}", "train.max_steps=20", "sampling.num_samples=40", "sampling.batch_size=40",
              "sampling.num_inference_steps=4", "metric.kid_subset_size=20"]
    lora = ["adapter=lora", f"adapter.classes={NEW}", "adapter.rank=2", "adapter.max_steps=10",
            "adapter.warmup_steps=2"]

    def run(*overrides):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return run_cell(compose("bench", overrides=[*common, *overrides]))

    return {"base_old": run(), "new": run(*lora), "old": run(*lora, f"sampling.classes={OLD}"),
            "scale0_old": run(*lora, f"sampling.classes={OLD}", "adapter.lora_scale=0"), "root": root}


def test_an_adapter_is_keyed_on_its_base_and_scored_on_its_classes(adapted_rows):
    base, new, old = adapted_rows["base_old"], adapted_rows["new"], adapted_rows["old"]
    assert base["data"] == old["data"] == "digits-8px-c1-cls0.1.2.3.4" and new["data"] == "digits-8px-c1-cls5.6.7.8.9"
    assert new["base_model_key"] == base["model_key"] and new["model_key"] == new["adapter_key"] != base["model_key"]
    assert old["adapter_key"] == new["adapter_key"]  # scored on other classes: the same adapter, from the cache
    assert new["adapter"] == "lora" and new["adapter_rank"] == 2 and new["adapter_classes"] == [5, 6, 7, 8, 9]
    assert new["adapter_train_steps"] == 10 and new["adapter_train_seconds"] > 0
    assert new["train_steps"] == 20  # the base model's
    assert new["cell_key"] != old["cell_key"] and new["fid"] != old["fid"]


def test_the_stored_adapter_is_its_low_rank_weights_only(adapted_rows):
    from safetensors.torch import load_file

    new = adapted_rows["new"]
    path = adapted_rows["root"] / "cache" / "models" / new["adapter_key"] / "model.safetensors"
    state = load_file(path)
    assert state and all("lora_A" in k or "lora_B" in k for k in state)
    assert sum(v.numel() for v in state.values()) == new["adapter_trainable_params"]
    assert new["adapter_bytes"] == path.stat().st_size
    assert any(float(v.abs().sum()) > 0 for k, v in state.items() if "lora_B" in k)  # trained: B moved off zero


def test_lora_scale_zero_samples_the_base_model(adapted_rows):
    """W + 0 (alpha / r) B A = W: the same images as the base model, so the same scores, to the last bit."""
    base, zero, old = adapted_rows["base_old"], adapted_rows["scale0_old"], adapted_rows["old"]
    assert zero["lora_scale"] == 0.0 and zero["cell_key"] != old["cell_key"]
    assert zero["fid"] == base["fid"] and zero["kid"] == base["kid"]
    assert old["fid"] != base["fid"]


def test_the_report_tabulates_adapters_on_new_and_old_classes(adapted_rows, tmp_path):
    """bench-report's adapter table: one row per adapter (the base first) with its cost beside FID on the taught
    classes and on the old ones, read from the rows."""
    import pandas as pd

    from bench.report import main as report

    out = tmp_path / "report"
    report([str(adapted_rows["root"] / "runs" / "smoke"), "--out", str(out), "--no-plots", "--metric", "fid,kid"])
    table = pd.read_csv(out / "table_adapter.csv")
    base, lora_1, lora_0 = (table.iloc[i] for i in range(3))
    assert list(table["adapter"]) == ["none", "lora", "lora"] and list(table["lora_scale"].fillna(-1)) == [-1, 1, 0]
    new, old, zero = adapted_rows["new"], adapted_rows["old"], adapted_rows["scale0_old"]
    assert lora_1["fid_new"] == pytest.approx(new["fid"]) and lora_1["fid_old"] == pytest.approx(old["fid"])
    assert lora_0["fid_old"] == pytest.approx(zero["fid"]) and base["fid_old"] == pytest.approx(zero["fid"])
    assert lora_1["adapter_trainable_params"] == new["adapter_trainable_params"]
    assert lora_1["base_model_key"] == base["base_model_key"] == adapted_rows["base_old"]["model_key"]
    assert "adapters on a base model" in (out / "report.md").read_text()


# ------------------------------------------------------------------------------ a given LoRA file on a pipeline

@pytest.fixture(scope="module")
def tiny_sd_lora(tmp_path_factory):
    """The tiny random-weight Stable Diffusion pipeline (built offline) and a rank-2 LoRA file for its UNet whose B
    is random (not zero), written by diffusers' own save_lora_weights."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from bench.models import tiny

    root = tmp_path_factory.mktemp("pipeline_lora")
    path = tiny.save("sd", root / "sd")
    unet = StableDiffusionPipeline.from_pretrained(path).unet
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g))
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(root / "lora", unet_lora_layers=state)
    return path, root / "lora", sum(v.numel() for v in state.values())


def test_a_lora_file_on_a_pipeline_at_each_lora_scale(tiny_sd_lora, pipeline_run):
    """load_lora_weights + set_adapters(lora_scale): scale 0 samples the pipeline itself, bit for bit; scale 1 other
    images; the row names the file's rank, parameters and bytes, and a key of the pipeline and the file."""
    path, lora_dir, params = tiny_sd_lora

    def run(*overrides):
        r = pipeline_run(path, *overrides, num_samples=4, batch_size=4)
        return r.x, r.train_info, r.columns

    base, base_info, _ = run()
    zero, zero_info, cols = run("adapter=lora", f"adapter.path={lora_dir}", "adapter.lora_scale=0")
    one, one_info, cols1 = run("adapter=lora", f"adapter.path={lora_dir}")
    assert torch.equal(zero, base)
    assert (one - base).abs().max() > 1e-3
    assert cols["lora_scale"] == 0.0 and cols1["lora_scale"] == 1.0 and cols1["adapter_rank"] == 2
    assert cols1["adapter_trainable_params"] == params
    assert cols1["adapter_bytes"] == (lora_dir / "pytorch_lora_weights.safetensors").stat().st_size
    assert cols1["base_model_key"] == base_info["model_key"] != one_info["model_key"] == zero_info["model_key"]


@pytest.mark.parametrize("overrides,fragment", [
    (("adapter=lora",), "adapter.path=None is not allowed: a LoRA file or directory with model=pipeline"),
    (("adapter=lora", "adapter.path=/nonexistent/lora.safetensors"), "found 0"),
    (("adapter=full",), "adapter.kind='full' is not allowed: none or lora"),
])
def test_bad_pipeline_adapters_are_one_line(tiny_sd_lora, compose_cfg, overrides, fragment):
    from bench.validate import validate

    path, _, _ = tiny_sd_lora
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace(".", r"\.")):
        validate(compose_cfg("data=shapes", "model=pipeline", f"model.path={path}", "prompts=shapes", *overrides))


@pytest.mark.parametrize("adapter", ["none", "lora", "full"])
def test_the_lora_rank_study_composes_and_validates(compose_cfg, adapter):
    """sweeps/lora_rank.yaml: a base on digits 0-4, adapters taught 5-9 (one cell of its grid per kind)."""
    from bench.validate import validate

    cfg = compose_cfg("sweep=lora_rank", f"adapter={adapter}", "adapter.rank=32", f"sampling.classes={OLD}")
    assert list(cfg.data.classes) == [0, 1, 2, 3, 4] and list(cfg.adapter.classes) == [5, 6, 7, 8, 9]
    assert validate(cfg).id == "digits-8px-c1-cls0.1.2.3.4"
