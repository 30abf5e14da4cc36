"""The cells each documented command expands to (what Hydra's multirun will launch), checked before any work."""
import dataclasses

import pytest
from omegaconf import OmegaConf

from bench.preflight import CompositionError, compose_cells, compose_cfg, expand
from bench.schema import MODEL_SCHEMAS


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
    (["sampler=foo"], "sampler=foo is not allowed: one of ddim, ddpm, deis, dpmpp"),
    (["sampling.num_step=3"], "sampling.num_step: no such key in SamplingConfig; allowed keys: num_inference_steps"),
    (["sampling.num_inference_steps=abc"], "could not be converted to Integer"),
])
def test_composition_errors_are_one_line(argv, msg):
    with pytest.raises(CompositionError) as e:
        expand(argv)
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv,values", [
    (["experiment=smoke", "-m", "sampler=glob(d*)"], {"ddim", "ddpm", "deis", "dpmpp"}),
    (["experiment=smoke", "-m", "sampler=glob([d*,e*],exclude=ddpm)"], {"ddim", "deis", "dpmpp", "euler"}),
    (["experiment=smoke", "-m", "sampler=choice(ddim,heun)"], {"ddim", "heun"}),
])
def test_hydra_sweep_syntax_expands_like_the_basic_sweeper(argv, values):
    cells = expand(argv)
    assert {c[-1].split("=", 1)[1] for c in cells} == values and len(cells) == len(values)


def test_range_sweeps_and_bad_sweep_functions():
    steps = expand(["experiment=smoke", "-m", "sampling.num_inference_steps=range(2,8,2)"])
    assert [c[-1] for c in steps] == [f"sampling.num_inference_steps={v}" for v in (2, 4, 6)]
    with pytest.raises(CompositionError, match="matches no option of 'sampler'"):
        expand(["-m", "sampler=glob(zz*)"])
    with pytest.raises(CompositionError, match="'sampling.eta' is not one"):
        expand(["-m", "sampling.eta=glob(*)"])
    with pytest.raises(CompositionError, match="interval\\(\\) has no grid"):
        expand(["-m", "sampling.guidance_scale=interval(0,1)"])


def test_plain_overrides_run_one_cell_and_bare_bench_the_default_job():
    from bench.preflight import one_cell_argv

    assert one_cell_argv([]) == [] and len(expand([])) == 6
    argv = one_cell_argv(["sampling.guidance_scale=3"])
    assert argv[-1] == "hydra.mode=RUN" and len(expand(argv)) == 1
    for kept in (["-m", "sampling.guidance_scale=3"], ["sweep=guidance"], ["experiment=smoke"],
                 ["sampler=ddim,euler"], ["hydra.mode=MULTIRUN"], ["out_dir=/tmp/x", "tracker=none"]):
        assert one_cell_argv(kept) == kept


def test_added_keys_the_schema_does_not_declare_are_refused():
    from bench.preflight import check
    from bench.schema import ConfigError

    with pytest.raises(ConfigError, match=r"trainer.accumulate_grad_batches=2 is not allowed: a key of TrainerConfig"):
        check(["experiment=smoke", "+trainer.accumulate_grad_batches=2"])
    with pytest.raises(ConfigError, match=r"sampling.foo"):
        check(["experiment=smoke", "+sampling.foo=1"])
    assert check(["experiment=smoke"]) == 1


def test_help_lists_real_options_not_schema_nodes():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "bench.run", "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "_schema" not in p.stdout
    from bench.sampling.samplers import SAMPLERS

    assert "sampler: " + ", ".join(sorted(SAMPLERS)) in p.stdout  # every registered sampler, from its YAML


@pytest.mark.parametrize("study", ["scheduler_steps", "ddim_eta", "guidance", "distill_vs_ddim"])
def test_every_study_validates_on_every_family_with_only_model_set(study):
    """Every existing study runs on each family with no change to its file, only model=<family> (text_unet on
    its captioned data): every cell composes and validates before any work."""
    from bench.preflight import check

    for family in (["model=dit"], ["model=latent_unet"], ["model=latent_dit"], ["model=text_unet", "data=shapes"]):
        assert check(["-m", f"sweep={study}", *family]) == len(expand(["-m", f"sweep={study}"])), family


@pytest.mark.parametrize("family", sorted(MODEL_SCHEMAS))
def test_each_family_composes_its_own_keys_only(family):
    """model=<family> composes that family's schema (model/<family>_schema): its keys and no other family's, and a
    key of another family fails at composition, in one line naming the family and its keys."""
    schema = MODEL_SCHEMAS[family]
    cfg = compose_cfg([f"model={family}"])
    assert OmegaConf.get_type(cfg.model) is schema
    assert list(cfg.model) == [f.name for f in dataclasses.fields(schema)]
    foreign = "vae" if "vae" not in cfg.model else "hidden"
    with pytest.raises(CompositionError) as e:
        compose_cfg([f"model={family}", f"model.{foreign}=1"])
    assert str(e.value).startswith(f"model.{foreign}: no such key in {schema.__name__} (model={family}); allowed "
                                   f"keys: name, ") and "\n" not in str(e.value)


def test_smoke_shrinks_the_unet_families_only():
    """experiment=smoke's smaller UNet (conf/experiment_model/smoke_<family>.yaml) reaches every UNet family, and
    composes with the families that have no UNet."""
    for family, data in (("unet", "digits"), ("latent_unet", "digits"), ("text_unet", "shapes")):
        assert list(compose_cfg(["experiment=smoke", f"model={family}", f"data={data}"]).model.block_out_channels) == [
            16, 32]
    assert list(compose_cfg(["model=unet"]).model.block_out_channels) == [32, 64]
    assert compose_cfg(["experiment=smoke", "model=dit"]).model.patch_size == 2



def test_cells_sharing_group_choices_compose_as_hydra_composes_each():
    """The preflight composes once per set of group choices and applies each cell's value overrides to a copy:
    every cell's config (and a bad value's one-line error) is the one a full compose of that cell gives."""
    cells = expand(["-m", "experiment=smoke", "tracker=none", "sampler=ddim,euler",
                    "sampling.num_inference_steps=2,3", "++train.max_steps=5"])
    assert len(cells) == 4
    got = [(OmegaConf.to_yaml(cfg), o) for cfg, o in compose_cells(cells)]
    assert [o for _, o in got] == cells
    assert [y for y, _ in got] == [OmegaConf.to_yaml(compose_cfg(o)) for o in cells]
    bad = [*cells[0][:-1], "sampling.num_inference_steps=many"]
    with pytest.raises(CompositionError) as full:
        compose_cfg(bad)
    with pytest.raises(CompositionError) as fast:
        list(compose_cells([cells[0], bad]))
    assert str(fast.value) == str(full.value) and "sampling.num_inference_steps" in str(fast.value)


@pytest.mark.parametrize("checked", [True, False])
def test_hydra_composes_a_checked_cell_once_and_any_other_twice(checked, tmp_path, monkeypatch):
    """After the preflight, the sweeper skips its own composition of each cell (the launcher still composes it);
    a cell the preflight did not check is composed by both, as Hydra's basic sweeper does."""
    import sys

    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from bench import preflight, run

    argv = ["-m", "sweep=ddim_eta", "experiment=smoke", "tracker=none", "sampling.num_samples=7",
            "sampler.eta=0,0.5", f"out_dir={tmp_path}"]
    composed, real = [], ConfigLoaderImpl.load_sweep_config

    def counting(self, master_config, sweep_overrides):
        composed.append(sorted(sweep_overrides))
        return real(self, master_config, sweep_overrides)

    real_check = preflight.check

    def check(a):
        n = real_check(a)
        if not checked:
            preflight._CHECKED.clear()
        return n

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counting)
    monkeypatch.setattr(preflight, "check", check)
    monkeypatch.setattr(preflight, "_CHECKED", set())
    monkeypatch.setattr(run, "run_job", lambda cfg: None)
    monkeypatch.setattr(run.summary, "summarise", lambda cfg: None)
    monkeypatch.setattr(sys, "argv", ["bench", *argv])
    run.main()
    cells = expand(argv)
    assert len(cells) == 6  # 3 step counts x 2 etas
    assert len(composed) == (1 if checked else 2) * len(cells)
    assert len({tuple(c) for c in composed}) == len(cells)


def test_the_sweeper_plugin_is_known_to_hydra_outside_the_checkout(tmp_path):
    """A fresh interpreter started elsewhere (as the `bench` script is): an editable install reaches
    hydra_plugins/bench_sweeper only through its import hook, which Hydra's plugin scan does not list."""
    import os
    import subprocess
    import sys

    code = ("import bench.run; from hydra.core.plugins import Plugins; "
            "print('hydra_plugins.bench_sweeper.PreflightedSweeper' in Plugins.instance().class_name_to_class)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.strip().splitlines()[-1] == "True", p.stderr[-2000:]
