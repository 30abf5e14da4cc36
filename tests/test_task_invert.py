"""task=invert (bench/tasks/invert.py) and the task group: validation, keys, the inversion path against diffusers'
own inverse-scheduler test, reconstruction error against the step count and guidance, null-text inversion."""
from __future__ import annotations

import pytest

from bench.schema import ConfigError


def _validate(cfg):
    from bench.keys import normalise
    from bench.validate import validate

    return validate(normalise(cfg))


# --------------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("overrides, match", [
    (("experiment=toy2d", "task=invert"), r"^task='invert' is not allowed: generate for data=toy2d"),
    (("task=invert", "data.class_conditional=false", "task.method=null_text"),
     r"^task\.method='null_text' is not allowed: plain for model=unet .*unconditional"),
    (("task=invert", "sampler=dpmpp"), r"^sampler='dpmpp' is not allowed: ddim with task=invert"),
    (("task=invert", "sampler.eta=0.5"), r"^sampler\.eta=0\.5 is not allowed: 0 with task=invert"),
    (("task=invert", "sampler.timestep_spacing=linspace"), r"^sampler\.timestep_spacing='linspace'"),
    (("task=invert", "task.method=exact"), r"^task\.method='exact' is not allowed: plain \| null_text"),
    (("task=invert", "task.num_images=100000"), r"^task\.num_images=100000 is not allowed: at most 360"),
    (("task=invert", "task.split=val"), r"^task\.split='val' is not allowed: test \| train"),
    (("task=invert", "task.num_images=0"), r"^task\.num_images=0 is not allowed: an integer in \[1, inf\)"),
    (("task=invert", "metric.repeats=2"), r"^metric\.repeats=2 is not allowed: 1 with task=invert"),
    (("task=invert", "task.method=null_text", "sampling.guidance_scale=3", "task.null_lr=0"),
     r"^task\.null_lr=0\.0 is not allowed: a number in \(0, inf\)"),
    (("task=bogus",), None),  # an unknown option: Hydra's own error at composition
])
def test_bad_task_settings_are_one_line_errors(compose_cfg, overrides, match):
    if match is None:
        from hydra.errors import MissingConfigException

        with pytest.raises(MissingConfigException):
            compose_cfg(*overrides)
        return
    with pytest.raises(ConfigError, match=match):
        _validate(compose_cfg(*overrides))


def test_strength_outside_0_1_is_refused(compose_cfg):
    """Edit's strength: (0, 1] whatever the task (its range is the schema's)."""
    from bench.validate import check_bounds

    for bad in (0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"^task\.strength=.* is not allowed: a number in \(0, 1\]"):
            check_bounds(compose_cfg(f"task.strength={bad}"))
    check_bounds(compose_cfg("task.strength=1"))


def test_an_edit_target_needs_that_condition(compose_cfg):
    from bench.data import get_data_info
    from bench.tasks.common import check_target

    uncond = compose_cfg("data.class_conditional=false", "task.target=3")
    with pytest.raises(ConfigError, match=r"^task\.target='3' is not allowed: same for model=unet .*unconditional"):
        check_target(uncond, get_data_info(uncond.data))
    cond = compose_cfg("task.target=12")
    with pytest.raises(ConfigError, match=r"^task\.target='12' is not allowed: same or a class index 0\.\.9"):
        check_target(cond, get_data_info(cond.data))
    ok = compose_cfg("task.target=3")
    check_target(ok, get_data_info(ok.data))


# --------------------------------------------------------------------------------------------------------- keys

def test_generate_keeps_its_keys_and_task_settings_enter_only_where_they_act(compose_cfg):
    """At task=generate the task group adds nothing to the cell key (committed keys hold: tests/test_keys.py); a task's
    own settings enter its key; settings without effect are normalised out (null-text at guidance 1 is plain)."""
    from bench.keys import cell_config, cell_key, normalise

    base = compose_cfg()
    assert "task" not in cell_config(base)
    assert cell_key(normalise(compose_cfg("task.strength=0.9", "task.method=null_text"))) == cell_key(base)
    inv = compose_cfg("task=invert")
    assert cell_config(inv)["task"] == {"name": "invert"}
    assert cell_key(normalise(compose_cfg("task=invert", "sampling.num_samples=7"))) == cell_key(inv)
    assert cell_key(normalise(compose_cfg("task=invert", "task.method=null_text"))) == cell_key(inv)  # w = 1
    w3 = compose_cfg("task=invert", "sampling.guidance_scale=3")
    null3 = normalise(compose_cfg("task=invert", "sampling.guidance_scale=3", "task.method=null_text"))
    assert cell_key(null3) != cell_key(w3)
    assert cell_config(null3)["task"] == {"name": "invert", "method": "null_text"}
    assert cell_key(compose_cfg("task=invert", "task.num_images=8")) != cell_key(inv)
