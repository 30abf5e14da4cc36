"""model=torch (bench/models/torch_module.py, torch_probe.py): the user's own nn.Module through the harness.

- a harness model exported as a plain state dict + a factory samples identically through model=torch;
- the probe passes the example adapter (examples/own_model/) and refuses three mis-declarations, naming each;
- bad input (factory, weights, schedule table, declarations) is one ConfigError line before any work;
- everything declared is in the model key by content.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bench.schema import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "own_model"
# the example adapter: its author's conventions declared ([-0.5, 0.5], t / T with t = 1..T, a T + 1 table, y=)
OWN = [f"model.target={EXAMPLE / 'net.py'}:make_net", f"model.weights={EXAMPLE / 'weights.safetensors'}",
       f"model.schedule_file={EXAMPLE / 'alphas_cumprod.npy'}", "model.time_input=fraction",
       "model.data_range=[-0.5,0.5]", "model.label_arg=y"]

FACTORY = '''
from diffusers import UNet2DModel
from bench.models import UNetDenoiser


def make(channels=1, size=8, num_classes=10, blocks=(16, 32)):
    return UNetDenoiser(UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                                    block_out_channels=tuple(blocks), layers_per_block=1,
                                    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                    up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                    attention_head_dim=8, num_class_embeds=num_classes + 1))
'''


def _torch(compose_cfg, *overrides):
    return compose_cfg("model=torch", *overrides)


def _samples(cfg, n: int = 16):
    from bench.data import get_data_info
    from bench.metrics.cost import CostMeter
    from bench.sampling.subject import sampling_call
    from bench.subjects import load_subject
    from bench.validate import validate

    info = validate(cfg)
    subject, train_info = load_subject(cfg, info, "cpu")
    call = sampling_call(cfg.sampling, cfg.sampler, cfg.cost, cfg.metric, cfg.model, get_data_info(cfg.data), "cpu")
    x = torch.cat([b.x for b in subject.batches(call, CostMeter("cpu"), 0, n)])
    return x, subject, train_info


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The smoke UNet trained by the harness, exported as its author would: a factory file and a plain state dict
    (torch.save with DataParallel's "module." prefix, and safetensors)."""
    from hydra import compose, initialize_config_dir

    from bench.schema import register
    from bench.training import load_or_train

    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("bench", overrides=["experiment=smoke", "tracker=none"])
    model, _ = load_or_train(cfg)
    d = tmp_path_factory.mktemp("exported")
    (d / "factory.py").write_text(FACTORY)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"ema": {f"module.{k}": v for k, v in state.items()}, "step": torch.tensor(30)}, d / "ckpt.pt")
    save_file(state, str(d / "weights.safetensors"))
    return d


def test_a_harness_model_exported_as_a_state_dict_samples_identically(compose_cfg, exported, one_thread):
    # channels_last is a memory format the harness puts its own UNet in (rounding ~1e-4 apart); a user's module is
    # sampled as it is built, so the harness's path is compared in the same format
    own = compose_cfg("sampler=dpmpp", "sampling.guidance_scale=2", "cost.channels_last=false")
    via = ("model.probe=false",)  # a 30-step smoke model: the probe measures it, the switch lets it through
    pt = _torch(compose_cfg, f"model.target={exported / 'factory.py'}:make", f"model.weights={exported / 'ckpt.pt'}",
                "model.weights_key=ema", "model.strip_prefix=module.", "sampler=dpmpp", "sampling.guidance_scale=2",
                *via)
    st = _torch(compose_cfg, f"model.target={exported / 'factory.py'}:make",
                f"model.weights={exported / 'weights.safetensors'}", "sampler=dpmpp", "sampling.guidance_scale=2",
                *via)
    x_own, _, _ = _samples(own)
    x_pt, subject, info = _samples(pt)
    x_st, _, _ = _samples(st)
    diff = max(float((x_pt - x_own).abs().max()), float((x_st - x_own).abs().max()))
    print(f"export-and-reload max abs diff: {diff}")
    assert diff == 0.0
    assert info["train_steps"] == 0 and info["num_params"] > 0
    probe = next(g for g in subject.columns().groups if hasattr(g, "probe_x0_error"))
    assert probe.probe_bypassed and probe.probe_x0_error > 0


def test_the_example_adapter_passes_its_probe_and_records_it(compose_cfg):
    from bench.data import get_data_info
    from bench.models.torch_probe import MAX_X0_ERROR, probe

    cfg = _torch(compose_cfg, *OWN)
    cols = probe(cfg, get_data_info(cfg.data))
    print(f"probe, correct adapter: x0 error {cols.probe_x0_error}, eps std {cols.probe_eps_std}")
    assert cols.probe == "passed" and not cols.probe_bypassed
    assert cols.probe_x0_error == pytest.approx(0.688, abs=0.02) and cols.probe_x0_error < MAX_X0_ERROR - 0.2
    assert cols.probe_eps_std == pytest.approx(1.063, abs=0.02)
    assert cols.probe_images == 64


@pytest.mark.parametrize("wrong, key", [
    ("model.time_input=index", "model.time_input"),
    ("model.data_range=[-1,1]", "model.data_range"),
    ("objective=x0", "objective"),
])
def test_a_mis_declaration_is_refused_naming_it(compose_cfg, wrong, key):
    from bench.validate import validate

    cfg = _torch(compose_cfg, *OWN, wrong)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    print(f"probe, {wrong}: {msg}")
    assert e.value.key == key and "\n" not in msg
    assert "the probe measured x0 error" in msg
    measured = float(msg.split("x0 error ")[1].split()[0])
    assert measured > 0.8
    bypassed = _torch(compose_cfg, *OWN, wrong, "model.probe=false")
    from bench.data import get_data_info
    from bench.models.torch_probe import probe

    cols = probe(bypassed, get_data_info(bypassed.data))
    assert cols.probe == "failed" and cols.probe_bypassed and cols.probe_x0_error == pytest.approx(measured, rel=1e-2)


def test_the_schedule_as_a_buffer_or_betas_is_the_same_adapter(compose_cfg, tmp_path):
    from bench.data import get_data_info
    from bench.models.torch_probe import probe

    abar = np.load(EXAMPLE / "alphas_cumprod.npy")
    betas = 1 - abar[1:] / abar[:-1]
    np.savetxt(tmp_path / "betas.txt", np.concatenate([[0.0], betas]))
    base = [o for o in OWN if not o.startswith("model.schedule_file")]
    values = []
    for extra in (["model.schedule_buffer=alphas_cumprod"],
                  [f"model.schedule_file={tmp_path / 'betas.txt'}", "model.schedule_values=betas"]):
        cfg = _torch(compose_cfg, *base, *extra)
        values.append(probe(cfg, get_data_info(cfg.data)).probe_x0_error)
    assert values[0] == pytest.approx(values[1], rel=1e-4)


# ------------------------------------------------------------------------------------------------------ bad input

def _bad(tmp_path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return f"model.target={tmp_path / name}:make"


@pytest.mark.parametrize("case, key, words", [
    ("missing", "model.target", "no such file"),
    ("import", "model.target", "ModuleNotFoundError"),
    ("raises", "model.target", "ValueError: width must be even"),
    ("not_module", "model.target", "returned dict"),
    ("no_factory", "model.target", "no callable make"),
])
def test_a_factory_that_cannot_build_is_one_line(compose_cfg, tmp_path, case, key, words):
    from bench.validate import validate

    target = {
        "missing": f"model.target={tmp_path / 'nope.py'}:make",
        "import": _bad(tmp_path, "a.py", "import not_a_package_anywhere\n"),
        "raises": _bad(tmp_path, "b.py", "def make():\n    raise ValueError('width must be even')\n"),
        "not_module": _bad(tmp_path, "c.py", "def make():\n    return {}\n"),
        "no_factory": _bad(tmp_path, "d.py", "x = 1\n"),
    }[case]
    with pytest.raises(ConfigError) as e:
        validate(_torch(compose_cfg, target, "model.label_arg=y"))
    assert e.value.key == key and words in str(e.value) and "\n" not in str(e.value)


def test_weights_that_do_not_fit_name_the_keys(compose_cfg, tmp_path):
    from bench.validate import validate

    state = dict(__import__("safetensors.torch").torch.load_file(str(EXAMPLE / "weights.safetensors")))
    prefixed = {f"module.{k}": v for k, v in state.items()}
    save_file(prefixed, str(tmp_path / "prefixed.safetensors"))
    del state["inp.weight"]
    state["extra.bias"] = torch.zeros(3)
    save_file(state, str(tmp_path / "wrong.safetensors"))
    base = [o for o in OWN if not o.startswith("model.weights")]
    with pytest.raises(ConfigError) as e:
        validate(_torch(compose_cfg, *base, f"model.weights={tmp_path / 'wrong.safetensors'}"))
    assert "missing: inp.weight" in str(e.value) and "unexpected: extra.bias" in str(e.value)
    with pytest.raises(ConfigError) as e:
        validate(_torch(compose_cfg, *base, f"model.weights={tmp_path / 'prefixed.safetensors'}"))
    assert "set model.strip_prefix=module." in str(e.value)


@pytest.mark.parametrize("table, words", [
    (np.ones((2, 3)) * 0.5, "1-D table"),
    (np.array([0.9, 0.5, 0.7]), "alphas_cumprod[2] = 0.7"),
    (np.array([0.9, 1.5, 0.1]), "entry 1 is 1.5"),
    (np.array([1.0, 0.5, 0.0]), "entry 2 is 0"),
])
def test_a_schedule_table_of_the_wrong_shape_order_or_range_is_one_line(compose_cfg, tmp_path, table, words):
    from bench.validate import validate

    np.save(tmp_path / "t.npy", table)
    base = [o for o in OWN if not o.startswith("model.schedule_file")]
    with pytest.raises(ConfigError) as e:
        validate(_torch(compose_cfg, *base, f"model.schedule_file={tmp_path / 't.npy'}"))
    assert e.value.key == "model.schedule_file" and words in str(e.value)


@pytest.mark.parametrize("overrides, key", [
    (["model.time_input=seconds"], "model.time_input"),
    (["model.time_dtype=long"], "model.time_dtype"),
    (["model.data_range=[1,0]"], "model.data_range"),
    (["model.image_size=16"], "model.image_size"),
    (["model.label_arg=y", "model.t_arg=y"], "model.x_arg"),
    (["model.label_arg=y", "data.class_conditional=false"], "model.label_arg"),
    (["model.label_arg=y", "objective=flow", "sampler=flow_euler"], "objective"),
])
def test_inconsistent_declarations_are_one_line(compose_cfg, overrides, key):
    from bench.validate import validate

    base = [o for o in OWN if not o.startswith("model.label_arg")]
    with pytest.raises(ConfigError) as e:
        validate(_torch(compose_cfg, *base, *overrides))
    assert e.value.key == key


def test_bad_input_on_the_command_line_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """The real entry point (in-process): a failing probe is one `bench: error:` line, exit 2, no results."""
    from cli_runner import assert_one_line_error, in_process

    out = tmp_path / "runs"
    code, err = in_process(capsys, monkeypatch, "experiment=smoke", "tracker=none", "model=torch", *OWN,
                           "model.time_input=index", f"out_dir={out}")
    line = assert_one_line_error(code, err, out)
    assert "model.time_input='index' is not allowed" in line and "likely model.time_input=fraction" in line


# ---------------------------------------------------------------------------------------------------------- keys

def test_everything_declared_is_in_the_model_key_by_content(compose_cfg, tmp_path):
    import shutil

    from bench import keys

    for f in ("net.py", "weights.safetensors", "alphas_cumprod.npy"):
        shutil.copy(EXAMPLE / f, tmp_path / f)
    own = [o.replace(str(EXAMPLE), str(tmp_path)) for o in OWN]
    base = keys.model_key(_torch(compose_cfg, *own))
    assert keys.model_key(_torch(compose_cfg, *own, "model.time_offset=1")) != base
    assert keys.model_key(_torch(compose_cfg, *own, "schedule.num_train_timesteps=500")) != base
    changed = []
    for f in ("net.py", "weights.safetensors", "alphas_cumprod.npy"):
        before = (tmp_path / f).read_bytes()
        (tmp_path / f).write_bytes(before + b"\n" if f.endswith(".py") else before[:-8] + bytes(8))
        changed.append(keys.model_key(_torch(compose_cfg, *own)) != base)
        (tmp_path / f).write_bytes(before)
    assert changed == [True, True, True]
    assert keys.model_key(_torch(compose_cfg, *own)) == base
    assert keys.model_key(_torch(compose_cfg, *own, "model.probe=false")) == base  # a run setting


def test_distillation_trains_a_student_of_the_adapter(compose_cfg, one_thread, tmp_path, monkeypatch):
    """The student is the adapter's own parameters (net.*) trained by the harness: a round trip through the cache."""
    from bench.distill import load_or_distill

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    cfg = _torch(compose_cfg, *OWN, "distill=progressive", "distill.teacher_steps=4", "distill.max_steps=2",
                 "distill.batch_size=16", "sampling.num_inference_steps=2")
    student, info = load_or_distill(cfg)
    assert info["distill_train_steps"] == 2 and info["teacher_key"] != info["model_key"]
    assert all(k.startswith("net.") for k in student.state_dict())


def test_the_adapter_pickles_for_sharded_sampling(compose_cfg):
    """A sharded cell's ranks get the subject pickled: the user's class (from a file the child never imported) is
    built again from the adapter's recipe, with the pickled weights."""
    import copy
    import pickle

    from bench.data import get_data_info
    from bench.models import build_model

    cfg = _torch(compose_cfg, *OWN)
    den = build_model(cfg.model, get_data_info(cfg.data)).eval()
    with torch.no_grad():
        den.net.inp.bias.add_(0.5)  # weights of its own, as a student's
        x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 500.0)
        want = den(x, t, torch.arange(4))
        for other in (pickle.loads(pickle.dumps(den)), copy.deepcopy(den)):
            assert torch.equal(other(x, t, torch.arange(4)), want)
