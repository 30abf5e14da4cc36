"""Every numeric key of the schema has a declared range (bench.schema.BOUNDS), and the validator refuses the whole
class of values outside it, NaN and inf included (property-based over the schema, not a list of examples)."""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from omegaconf import OmegaConf

from bench.schema import BOUNDS, ConfigError, numeric_fields, parse_bound
from bench.validate import check_bounds

FIELDS = dict(numeric_fields())


def test_every_numeric_key_declares_its_range():
    assert set(FIELDS) == set(BOUNDS), (set(FIELDS) ^ set(BOUNDS))
    for key, spec in BOUNDS.items():
        lo, hi, _, _ = parse_bound(spec)
        assert lo < hi, key


@pytest.fixture(scope="module")
def base(request):
    from reliability_helpers import compose

    return compose("experiment=smoke", "tracker=none")


def _outside(key: str):
    """Values of the key's type outside its range (and, for floats, NaN / ±inf)."""
    typ = FIELDS[key]
    lo, hi, lo_closed, hi_closed = parse_bound(BOUNDS[key])
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


def _inside(key: str):
    typ = FIELDS[key]
    lo, hi, lo_closed, hi_closed = parse_bound(BOUNDS[key])
    top = hi if math.isfinite(hi) else lo + 1e6
    if typ is int:
        return st.integers(min_value=int(lo) + (0 if lo_closed else 1), max_value=int(top) - (0 if hi_closed else 1))
    return st.floats(min_value=lo, max_value=top, exclude_min=not lo_closed, exclude_max=not hi_closed or top != hi)


@pytest.mark.parametrize("key", sorted(BOUNDS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_values_outside_the_range_are_refused_naming_the_key(base, key, data):
    bad = data.draw(_outside(key))
    cfg = OmegaConf.create(OmegaConf.to_container(base))  # typeless copy: the schema's type check came before
    OmegaConf.update(cfg, key, bad)
    with pytest.raises(ConfigError) as e:
        check_bounds(cfg)
    assert str(e.value).startswith(f"{key}=") and BOUNDS[key] in str(e.value) and "\n" not in str(e.value)
    good = data.draw(_inside(key))
    OmegaConf.update(cfg, key, good)
    check_bounds(cfg)  # the range itself is accepted
