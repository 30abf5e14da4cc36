"""Every numeric key of the schema (each model family's included) declares its range beside its field
(bench.schema.bounded), and the validator refuses the whole class of values outside it, NaN and inf included
(property-based over the schema, not a list of examples)."""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from omegaconf import OmegaConf

from bench.schema import MODEL_SCHEMAS, ConfigError, numeric_fields, parse_bound
from bench.validate import check_bounds

# (model family, key) -> (type, bounds): the shared groups once (with the default family), each family's model keys
FIELDS = {("unet", key): (typ, bounds) for key, typ, bounds in numeric_fields(model="unet")}
FIELDS.update({(family, key): (typ, bounds) for family in MODEL_SCHEMAS
               for key, typ, bounds in numeric_fields(model=family) if key.startswith("model.")})
BASE = {"unet": ["experiment=smoke"], "mlp": ["experiment=toy2d", "hydra.mode=RUN"],
        "text_unet": ["experiment=smoke", "model=text_unet", "data=shapes"]}


def test_every_numeric_key_declares_its_range():
    missing = [key for key, (_, bounds) in FIELDS.items() if bounds is None]
    assert not missing, missing
    for key, (_, spec) in FIELDS.items():
        lo, hi, _, _ = parse_bound(spec)
        assert lo < hi, key
    # every family's own keys are covered, not only the default family's
    assert {"model.hidden", "model.patch_size", "model.vae_kl_weight", "model.attention_head_dim"} <= {
        key for _, key in FIELDS}


def test_the_optimiser_keys_are_declared_once_and_shared():
    """train, classifier and distill share the optimiser's keys (and their ranges) through one dataclass."""
    from bench.schema import ClassifierConfig, DistillConfig, OptimConfig, TrainConfig

    for cls in (TrainConfig, ClassifierConfig, DistillConfig):
        assert issubclass(cls, OptimConfig)
    ranges = {key: bounds for (_, key), (_, bounds) in FIELDS.items()}
    for name in ("max_steps", "batch_size", "lr", "warmup_steps", "ema_decay"):
        assert ranges[f"train.{name}"] == ranges[f"classifier.{name}"] == ranges[f"distill.{name}"], name


_bases = {}


@pytest.fixture(scope="module")
def base():
    """A composed config of each model family (experiment=smoke, shrunk), composed once."""
    from reliability_helpers import compose

    def get(family: str):
        if family not in _bases:
            _bases[family] = compose(*BASE.get(family, ["experiment=smoke", f"model={family}"]), "tracker=none")
        return _bases[family]

    return get


def _outside(typ, spec: str):
    """Values of the key's type outside its range (and, for floats, NaN / ±inf)."""
    lo, hi, lo_closed, hi_closed = parse_bound(spec)
    if typ is int:
        below = st.integers(max_value=int(lo) - (1 if lo_closed else 0))
        parts = [below]
        if math.isfinite(hi):
            parts.append(st.integers(min_value=int(hi) + (1 if hi_closed else 0)))
        return st.one_of(*parts)
    below = st.floats(max_value=lo, exclude_max=lo_closed, allow_nan=False, allow_infinity=False)
    parts = [below, st.sampled_from([math.nan, math.inf, -math.inf])]
    if math.isfinite(hi):
        parts.append(st.floats(min_value=hi, exclude_min=hi_closed, allow_nan=False, allow_infinity=False))
    return st.one_of(*parts)


def _inside(typ, spec: str):
    lo, hi, lo_closed, hi_closed = parse_bound(spec)
    top = hi if math.isfinite(hi) else lo + 1e6
    if typ is int:
        return st.integers(min_value=int(lo) + (0 if lo_closed else 1), max_value=int(top) - (0 if hi_closed else 1))
    return st.floats(min_value=lo, max_value=top, exclude_min=not lo_closed, exclude_max=not hi_closed or top != hi)


@pytest.mark.parametrize("family,key", sorted(FIELDS), ids=[f"{f}-{k}" for f, k in sorted(FIELDS)])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_values_outside_the_range_are_refused_naming_the_key(base, family, key, data):
    typ, spec = FIELDS[family, key]
    bad = data.draw(_outside(typ, spec))
    cfg = OmegaConf.create(OmegaConf.to_container(base(family)))  # typeless copy: the schema's type check came before
    OmegaConf.update(cfg, key, bad)
    with pytest.raises(ConfigError) as e:
        check_bounds(cfg)
    assert str(e.value).startswith(f"{key}=") and spec in str(e.value) and "\n" not in str(e.value)
    good = data.draw(_inside(typ, spec))
    OmegaConf.update(cfg, key, good)
    check_bounds(cfg)  # the range itself is accepted
