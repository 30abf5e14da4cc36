"""DreamBooth: the prior-preservation loss as defined, class images drawn once and cached, the adapter's key, the
scores' definitions on fixed embeddings, one-line errors."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.adapt import KINDS, adapter_key, dreambooth
from bench.data import get_data_info
from bench.models import build_model
from bench.schema import ConfigError
from bench.validate import validate

HELD = [36, 37, 38, 39]  # the yellow circles
BASE_CLASSES = "data.classes=[" + ",".join(str(k) for k in range(48) if k not in HELD) + "]"


@pytest.fixture
def db_cfg(compose_cfg):
    def make(*overrides):
        return compose_cfg("family=shapes_text_unet", BASE_CLASSES, "adapter=dreambooth", "adapter.num_class_images=3",
                           "adapter.class_steps=2", *overrides)
    return make


@pytest.fixture(scope="module")
def tiny():
    """(cfg, info, a tiny text UNet with DreamBooth's prompts) built once."""
    from hydra import compose, initialize_config_dir

    from bench.schema import register
    register()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent.parent / "conf"), version_base="1.3"):
        cfg = compose("bench", overrides=["experiment=smoke", "tracker=none", "family=shapes_text_unet", BASE_CLASSES,
                                          "adapter=dreambooth", "model.block_out_channels=[8,16]",
                                          "model.norm_num_groups=4"])
    info = get_data_info(cfg.data)
    torch.manual_seed(0)
    model = dreambooth.with_prompts(cfg.adapter, build_model(cfg.model, info))
    return cfg, info, model


def _module(cfg, info, model, weight):
    from bench.adapt.common import adapter_train

    cls = type("M", (dreambooth.DreamBoothModule,), {"prior_weight": weight})
    return cls(cfg.model, cfg.objective, cfg.schedule, adapter_train(cfg), info, model=model)


def test_prior_loss_is_instance_plus_weight_times_class(tiny):
    cfg, info, model = tiny
    p = dreambooth.prompts(cfg.adapter, info.num_classes)
    inst = dreambooth.instance_images(cfg.data, cfg.adapter)
    pairs = dreambooth.PriorPairs(inst, p, torch.rand(6, 3, 16, 16) * 2 - 1)
    x, y = pairs.get_batch([0, 1, 2, 3, 4])
    assert x.shape == (5, 2, 3, 16, 16) and y.tolist() == [[p.instance, p.cls]] * 5
    assert torch.equal(x[4, 0], inst[0]) and len(pairs) == 6  # max(K, M) items, instance i % K

    def g():
        return torch.Generator().manual_seed(3)

    with torch.no_grad():
        losses = {w: float(_module(cfg, info, model, w).compute_loss(x, y, g())) for w in (0.0, 0.5, 1.0)}
        m = _module(cfg, info, model, 0.0)
        gen = g()  # the instance half draws t and noise first, the class half next, from one step generator
        instance = float(super(dreambooth.DreamBoothModule, m).compute_loss(x[:, 0], y[:, 0], gen))
        prior = float(super(dreambooth.DreamBoothModule, m).compute_loss(x[:, 1], y[:, 1], gen))
    assert losses[0.0] == pytest.approx(instance, rel=1e-6)
    assert losses[0.5] == pytest.approx(instance + 0.5 * prior, rel=1e-6)
    assert losses[1.0] - losses[0.0] == pytest.approx(prior, rel=1e-5) and prior > 0
    # lambda = 0: no class images at all, the batches are the instance images and their prompt
    xi, yi = dreambooth.PriorPairs(inst, p, None).get_batch([0, 1])
    assert xi.shape == (2, 3, 16, 16) and yi.tolist() == [p.instance] * 2


def test_prompts_are_rows_after_the_null_prompt(tiny):
    cfg, info, model = tiny
    p = dreambooth.prompts(cfg.adapter, info.num_classes)
    assert p.texts[:2] == ("a sks circle", "a circle") and p.scoring[0] == "a yellow circle at the top left"
    assert model.text_states.shape[0] == info.num_classes + 1 + len(p.texts)
    assert model.num_classes == info.num_classes  # label 48 is still the empty prompt (CFG's null branch)
    again = dreambooth.with_prompts(cfg.adapter, model)  # idempotent: a loaded adapter's base is built the same way
    assert again.text_states.shape[0] == model.text_states.shape[0]


def test_class_images_drawn_once_and_cached(tiny, bench_cache, monkeypatch):
    cfg, info, model = tiny
    cfg = copy.deepcopy(cfg)
    cfg.cache_dir = str(bench_cache)
    cfg.adapter.num_class_images, cfg.adapter.class_steps = 3, 2
    base = build_model(cfg.model, info)
    calls = []
    real = dreambooth._sample
    monkeypatch.setattr(dreambooth, "_sample", lambda *a, **k: calls.append(a[3:6]) or real(*a, **k))
    first = dreambooth.class_images(cfg, base, "base0")
    second = dreambooth.class_images(cfg, base, "base0")
    assert first.shape == (3, 3, 16, 16) and torch.equal(first, second) and len(calls) == 1
    p = dreambooth.prompts(cfg.adapter, info.num_classes)
    assert calls[0][0] == p.cls and calls[0][1] == 3  # the class prompt, num_class_images of them
    dreambooth.class_images(cfg, base, "base1")  # another base model: drawn again
    assert len(calls) == 2 and len(list((bench_cache / "dreambooth").glob("[0-9a-f]*"))) == 2


def test_adapter_key_holds_subject_token_weight_and_class_count(db_cfg):
    kind = KINDS["dreambooth"]
    base = adapter_key(db_cfg(), kind, "b")[1]
    for change in ("adapter.instance=red triangle", "adapter.token=zwx", "adapter.prior_weight=0.5",
                   "adapter.num_class_images=50", "adapter.method=lora", "adapter.num_instance=3"):
        assert adapter_key(db_cfg(change), kind, "b")[1] != base, change
    assert adapter_key(db_cfg("adapter.num_eval=8"), kind, "b")[1] == base  # a cell setting, not the adapter's
    assert adapter_key(db_cfg(), kind, "b2")[1] != base


def test_scores_on_fixed_embeddings():
    e = np.eye(4)
    assert dreambooth.clip_i(e[:2], e[:2]) == pytest.approx(0.5)  # cos 1 on the diagonal, 0 off it
    assert dreambooth.clip_i(2 * e[:1], e[:1]) == pytest.approx(1.0)  # cosine: scale-free
    assert dreambooth.pres(e[2:], e[:2]) == pytest.approx(0.0)
    assert dreambooth.clip_t(e[:3], e[:3]) == pytest.approx(1.0)  # row-paired, not all pairs
    assert dreambooth.clip_t(e[:2], e[[1, 0]]) == pytest.approx(0.0)
    assert dreambooth.div(np.ones((5, 4))) == pytest.approx(0.0)  # identical samples: no diversity
    assert dreambooth.div(e) == pytest.approx(1.0)  # orthogonal samples: distance 1 between every pair
    assert dreambooth.div(np.array([[1.0, 0], [1, 1], [0, 1]])) == pytest.approx(1 - (2 * np.sqrt(0.5)) / 3)
    rng = np.random.default_rng(0)
    f = rng.normal(size=(200, 3))
    assert dreambooth.drift(f, f) == pytest.approx(0.0, abs=1e-8)
    assert dreambooth.drift(f + [2.0, 0, 0], f) == pytest.approx(4.0, rel=1e-6)  # a mean shift: |shift|^2


@pytest.mark.parametrize("override, key, why", [
    ("adapter.instance=purple circle", "adapter.instance", "no such instance set"),
    ("adapter.instance=red circle", "adapter.instance", "trained on its classes [0, 1, 2, 3]"),
    ("adapter.token=circle", "adapter.token", "rare token"),
    ("adapter.method=half", "adapter.method", "full | lora"),
])
def test_bad_input_one_line(db_cfg, override, key, why):
    with pytest.raises(ConfigError) as e:
        validate(db_cfg(override))
    msg = str(e.value)
    assert key in msg and why in msg and "\n" not in msg


def test_study_file_composes_and_validates(compose_cfg):
    cfg = compose_cfg("sweep=dreambooth")
    validate(cfg)  # the instance is held out of the base model's classes, the token is rare
    assert cfg.adapter.kind == "dreambooth" and cfg.adapter.num_class_images == 100
    assert sorted(set(range(48)) - set(cfg.data.classes)) == HELD
