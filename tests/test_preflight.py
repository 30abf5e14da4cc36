"""The cells each documented command expands to (what Hydra's multirun will launch), checked before any work."""
import pytest

from bench.preflight import CompositionError, expand






@pytest.mark.parametrize("argv,n", [([], 6), (["-m", "sweep=scheduler_steps"], 30), (["-m", "sweep=ddim_eta"], 9),
                                    (["-m", "sweep=guidance"], 7), (["experiment=smoke"], 1),
                                    (["experiment=smoke", "-m", "sampler=ddim,euler"], 2)])
def test_documented_commands_expand_to_their_grids(argv, n):
    cells = expand(argv)
    assert len(cells) == n
    assert len({tuple(c) for c in cells}) == n


def test_sweeps_do_not_inherit_the_default_grid():
    for cell in expand(["-m", "sweep=ddim_eta"]) + expand(["-m", "sweep=guidance"]):
        assert "sampler=ddim" in cell, cell
    guidance = {c[-1] for c in expand(["-m", "sweep=guidance"])}
    assert guidance == {f"sampling.guidance_scale={v}" for v in ("0", "1", "1.5", "2", "3", "5", "7.5")}


def test_command_line_overrides_a_sweep_key():
    cells = expand(["-m", "sweep=scheduler_steps", "sampling.num_inference_steps=5,10"])
    assert len(cells) == 12


@pytest.mark.parametrize("argv,msg", [
    (["sampler=foo"], "sampler=foo is not allowed: one of ddim, ddpm, dpmpp"),
    (["sampling.num_step=3"], "sampling.num_step: no such key in SamplingConfig; allowed keys: num_inference_steps"),
    (["sampling.num_inference_steps=abc"], "could not be converted to Integer"),
])
def test_composition_errors_are_one_line(argv, msg):
    with pytest.raises(CompositionError) as e:
        expand(argv)
    assert msg in str(e.value) and "\n" not in str(e.value)
