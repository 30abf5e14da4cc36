"""Scheduler registry: one test class per sampler family on a shared base (diffusers' test layout).

Every class checks: it builds for each schedule x accepted objective, rejects the other objectives, counts the real
model calls (NFE), is batch-size invariant, and samples N(0, s^2) data correctly with the exact predictor
(bench.sampling.oracles) — which catches timestep-unit and prediction-type convention errors.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from bench.metrics.cost import CostMeter
from bench.sampling import (
    SAMPLERS,
    build_scheduler,
    check_combination,
    check_guidance,
    image_generators,
    initial_noise,
    sample,
)
from bench.sampling.oracles import GaussianOracle
from bench.schedule import train_sigmas
from bench.schema import ConfigError, register
from bench.training.objectives import PREDICTION_TYPE

CONF = str(Path(__file__).resolve().parents[1] / "conf")
SCHEDULES = ("linear", "scaled_linear", "cosine")
STD = 0.5  # data std for the analytic tests: != 1 so that a wrong parameterisation shows


def make_cfg(*overrides):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("bench", overrides=["experiment=smoke", *overrides])


def run(cfg, model, *, n, batch_size=None, steps=None, seed=0, guidance_scale=1.0, num_classes=0, shape=(2,)):
    """All samples as one tensor, and the cost meter."""
    steps = steps or cfg.sampling.num_inference_steps
    meter = CostMeter("cpu")
    xs = [b.x for b in sample(model, build_scheduler(cfg), shape=shape, num_samples=n,
                              batch_size=batch_size or n, seed=seed, num_inference_steps=steps,
                              guidance_scale=guidance_scale, num_classes=num_classes, device="cpu", cost=meter,
                              eta=cfg.sampler.eta, progress=False)]
    return torch.cat(xs), meter


class SchedulerFamily:
    """Shared checks; subclasses set the sampler and its expectations."""

    sampler: str
    nfe_10: int = 10  # real model calls per image for 10 steps
    analytic_steps: int = 20
    # relative error allowed on the std (discretisation; + sampling error for stochastic samplers). Measured with the
    # exact predictor on the linear schedule (uniform t puts few steps where sigma ~ std): dpmpp/unipc 20 steps 0.478,
    # heun 20 steps 0.484; all converge to 0.500 with more steps (dpmpp 100: 0.501, ddim 1000: 0.498).
    analytic_tol: float = 0.06
    analytic_n: int = 256  # deterministic: sample_std has no sampling error
    stochastic: bool = False
    extra: tuple = ()  # extra overrides for every config of this family

    def cfg(self, *overrides, objective=None, schedule="linear"):
        objective = objective or SAMPLERS[self.sampler].objectives[0]
        return make_cfg(f"sampler={self.sampler}", f"objective={objective}", f"schedule={schedule}", *self.extra,
                        *overrides)

    @pytest.mark.parametrize("schedule", SCHEDULES)
    def test_builds_for_each_schedule_and_objective(self, schedule):
        for objective in SAMPLERS[self.sampler].objectives:
            if objective == "flow" and schedule != "linear":
                continue  # flow ignores the beta schedule
            cfg = self.cfg(objective=objective, schedule=schedule)
            check_combination(cfg)
            sched = build_scheduler(cfg)
            assert isinstance(sched, SAMPLERS[self.sampler].cls)
            if "prediction_type" in sched.config:
                assert sched.config.prediction_type == PREDICTION_TYPE[objective]
            sched.set_timesteps(10)
            assert len(sched.timesteps) == self.nfe_10
            assert float(sched.timesteps.max()) <= cfg.schedule.num_train_timesteps

    def test_rejects_other_objectives(self):
        for objective in set(PREDICTION_TYPE) - set(SAMPLERS[self.sampler].objectives):
            with pytest.raises(ConfigError, match=rf"objective\.name='{objective}'"):
                check_combination(self.cfg(objective=objective))

    def test_nfe_counts_real_calls(self):
        cfg = self.cfg()
        _, meter = run(cfg, GaussianOracle(cfg, STD), n=3, steps=10)
        assert meter.calls == self.nfe_10
        assert meter.summary()["nfe"] == self.nfe_10

    def test_batch_size_invariance(self):
        cfg = self.cfg()
        model = GaussianOracle(cfg, STD)
        ref, _ = run(cfg, model, n=7, batch_size=1, steps=6)
        for bs in (4, 7):
            out, _ = run(cfg, model, n=7, batch_size=bs, steps=6)
            assert torch.equal(out, ref), f"batch_size={bs}: max diff {(out - ref).abs().max()}"

    def test_seeded(self):
        cfg = self.cfg()
        model = GaussianOracle(cfg, STD)
        a, _ = run(cfg, model, n=4, steps=5, seed=3)
        b, _ = run(cfg, model, n=4, steps=5, seed=3)
        c, _ = run(cfg, model, n=4, steps=5, seed=4)
        assert torch.equal(a, b) and not torch.equal(a, c)
        # image i uses seed + i: seed 4's image 0 is seed 3's image 1
        assert torch.equal(c[:3], a[1:])

    def oracle(self, cfg):
        return GaussianOracle(cfg, STD)

    @pytest.mark.parametrize("schedule", ["linear", "cosine"])
    def test_analytic_gaussian(self, schedule):
        # every objective on linear; the first one on cosine (the conventions do not depend on the schedule)
        objectives = SAMPLERS[self.sampler].objectives
        if schedule != "linear":
            objectives = objectives[:1]
        for objective in objectives:
            if objective == "flow" and schedule != "linear":
                continue
            cfg = self.cfg(objective=objective, schedule=schedule)
            x, _ = run(cfg, self.oracle(cfg), n=self.analytic_n, steps=self.analytic_steps)
            assert torch.isfinite(x).all()
            assert sample_std(x, self.stochastic) == pytest.approx(STD, rel=self.analytic_tol), (objective, schedule)


def sample_std(x, stochastic):
    """std of the samples. A deterministic sampler on Gaussian data with the exact predictor is a linear map
    x = c * z of its initial noise z, so std(x) / std(z) = c exactly, free of sampling error at any N."""
    if stochastic:
        return x.std().item()
    z = initial_noise(image_generators(0, 0, len(x)), x.shape[1:])
    return (x.std() / z.std()).item()


class TestDDPM(SchedulerFamily):
    sampler = "ddpm"
    stochastic = True
    analytic_steps = 100  # ancestral sampling converges slowly: 50 steps 0.444, 200 steps 0.480, 1000 steps 0.493
    analytic_n = 1000  # stochastic: ~2.2% sampling error on the std
    analytic_tol = 0.1

    def test_fewer_steps_than_training(self):
        sched = build_scheduler(self.cfg())
        sched.set_timesteps(7)
        assert len(sched.timesteps) == 7


class TestDDIM(SchedulerFamily):
    sampler = "ddim"
    analytic_steps = 50
    analytic_tol = 0.07  # first order: 50 steps gives 0.472 (linear), 0.485 (cosine); 1000 steps 0.498

    def test_final_step_lands_on_clean_sample(self):
        assert build_scheduler(self.cfg()).final_alpha_cumprod == 1.0  # set_alpha_to_one

    def test_eta_one_is_stochastic_and_batch_invariant(self):
        cfg = self.cfg("sampler.eta=1.0")
        model = GaussianOracle(cfg, STD)
        ref, _ = run(cfg, model, n=5, batch_size=1, steps=6)
        out, _ = run(cfg, model, n=5, batch_size=5, steps=6)
        det, _ = run(self.cfg(), model, n=5, steps=6)
        assert torch.equal(out, ref) and not torch.allclose(out, det)


class TestDPMSolverPP(SchedulerFamily):
    sampler = "dpmpp"

    def test_solver_order_and_algorithm(self):
        sched = build_scheduler(self.cfg("sampler.solver_order=3"))
        assert sched.config.algorithm_type == "dpmsolver++" and sched.config.solver_order == 3


class TestEuler(SchedulerFamily):
    sampler = "euler"
    analytic_steps = 50
    analytic_tol = 0.07


class TestHeun(SchedulerFamily):
    sampler = "heun"
    nfe_10 = 19  # two calls per step except the last (Karras et al. 2022, Alg. 1)


class TestUniPC(SchedulerFamily):
    sampler = "unipc"


class TestDEIS(SchedulerFamily):
    """Added as one registry entry + conf/sampler/deis.yaml (the proof that a sampler is one entry)."""
    sampler = "deis"


class TestLCM(SchedulerFamily):
    sampler = "lcm"
    stochastic = True
    analytic_n = 2000

    def oracle(self, cfg):
        # LCM re-noises the model's x0 at every step: it needs a consistency model (PF-ODE endpoint). Fed the
        # posterior mean it shrinks the variance (std 0.31 for 0.5) — correct behaviour, wrong test.
        return GaussianOracle(cfg, STD, consistency=True)

    def test_steps_limited_by_distillation_grid(self):
        with pytest.raises(ConfigError, match="sampling.num_inference_steps"):
            check_combination(self.cfg("sampling.num_inference_steps=51"))
        assert build_scheduler(self.cfg("distill.num_ddim_timesteps=20")).config.original_inference_steps == 20


class TestFlowEuler(SchedulerFamily):
    sampler = "flow_euler"
    analytic_steps = 50
    analytic_tol = 0.05  # 50 steps: 0.485

    def test_shift(self):
        """shift > 1 spends more steps at high noise (Esser et al. 2024): shifted sigmas >= plain ones, same ends."""
        plain, shifted = build_scheduler(self.cfg()), build_scheduler(self.cfg("schedule.flow_shift=3.0"))
        plain.set_timesteps(4)
        shifted.set_timesteps(4)
        assert shifted.config.shift == 3.0
        assert shifted.sigmas[0] == plain.sigmas[0] == 1.0 and shifted.sigmas[-1] == plain.sigmas[-1] == 0.0
        assert (shifted.sigmas[1:-1] > plain.sigmas[1:-1]).all() and shifted.sigmas[1] > plain.sigmas[1] + 0.1


# -- flow objective on the multistep solvers ------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["dpmpp", "unipc"])
def test_flow_multistep_uses_flow_sigmas(sampler):
    sched = build_scheduler(make_cfg(f"sampler={sampler}", "objective=flow", "schedule.flow_shift=2.0"))
    assert sched.config.use_flow_sigmas and sched.config.prediction_type == "flow_prediction"
    assert sched.config.flow_shift == 2.0


# -- sigma_max policy (euler / heun on the cosine schedule) --------------------------------------------------


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_cosine_sigma_max_clip(sampler, caplog):
    cfg = make_cfg(f"sampler={sampler}", "schedule=cosine", "sampling.num_inference_steps=10")
    sigmas = train_sigmas(cfg.schedule)
    assert sigmas[-1] > 2e4  # abar_{T-1} ~ 2e-9: the problem being handled
    with caplog.at_level(logging.WARNING):
        sched = build_scheduler(cfg)
    kept = sigmas[sigmas <= cfg.sampler.max_sigma]
    expected, t_max = float(kept[-1]), len(kept) - 1  # largest trained sigma <= max_sigma (160.4 at t = 995)
    assert f"clipped to sigma={expected:.4g}" in caplog.text and "2.029e+04" in caplog.text
    assert 150 < expected <= cfg.sampler.max_sigma
    sched.set_timesteps(10)
    # the first sigma is that trained sigma, and the model is queried at its training timestep
    assert float(sched.sigmas[0]) == pytest.approx(expected, rel=1e-5) and expected <= cfg.sampler.max_sigma
    assert float(sched.timesteps[0]) == t_max == 995
    assert float(sched.init_noise_sigma) == pytest.approx(expected, rel=1e-5)  # trailing spacing
    x, _ = run(cfg, GaussianOracle(cfg, STD), n=256, steps=50)
    assert torch.isfinite(x).all() and sample_std(x, False) == pytest.approx(STD, rel=0.05)


def test_cosine_sigma_max_error_and_allow(caplog):
    with pytest.raises(ConfigError, match=r"sampler\.sigma_max_policy='error'.*sigma_max=2\.029e\+04"):
        check_combination(make_cfg("sampler=euler", "schedule=cosine", "sampler.sigma_max_policy=error"))
    with caplog.at_level(logging.WARNING):
        sched = build_scheduler(make_cfg("sampler=euler", "schedule=cosine", "sampler.sigma_max_policy=allow"))
    assert "kept" in caplog.text
    sched.set_timesteps(10)
    assert float(sched.sigmas[0]) > 2e4


def test_no_clip_below_max_sigma(caplog):
    with caplog.at_level(logging.WARNING):
        sched = build_scheduler(make_cfg("sampler=euler", "schedule=scaled_linear"))  # sigma_max = 14.6
    assert caplog.text == "" and sched.config.num_train_timesteps == 1000 and sched.config.trained_betas is None


# -- combination checks ---------------------------------------------------------------------------------------

BAD = [
    (["sampler.name=plms"], "sampler.name"),
    (["sampler=flow_euler", "objective=eps"], "objective.name"),
    (["sampler=ddim", "objective=flow"], "objective.name"),
    (["sampler=euler", "objective=flow"], "objective.name"),
    (["sampling.num_inference_steps=0"], "sampling.num_inference_steps"),
    (["sampling.num_inference_steps=1001"], "sampling.num_inference_steps"),
    (["sampler=ddpm", "sampling.num_inference_steps=2000"], "sampling.num_inference_steps"),
    (["sampler.eta=-0.1"], "sampler.eta"),
    (["sampler.eta=1.5"], "sampler.eta"),
    (["sampler=dpmpp", "sampler.eta=0.5"], "sampler.eta"),
    (["sampling.guidance_scale=-1"], "sampling.guidance_scale"),
    (["sampler.timestep_spacing=uniform"], "sampler.timestep_spacing"),
    (["sampler=dpmpp", "sampler.solver_order=4"], "sampler.solver_order"),
    (["sampler=ddim", "sampler.use_karras_sigmas=true"], "sampler.use_karras_sigmas"),
    (["sampler=dpmpp", "objective=flow", "sampler.use_karras_sigmas=true"], "sampler.use_karras_sigmas"),
    (["sampler.sigma_max_policy=never"], "sampler.sigma_max_policy"),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_combination(overrides, key):
    with pytest.raises(ConfigError) as err:
        check_combination(make_cfg(*overrides))
    msg = str(err.value)
    assert err.value.key == key and msg.startswith(key + "=") and "\n" not in msg and "not allowed" in msg


def test_good_combinations_pass():
    for overrides in (["sampler=ddim", "sampler.eta=1.0"], ["sampler=heun", "sampler.use_karras_sigmas=true"],
                      ["sampler=unipc", "objective=flow"], ["sampler=ddpm", "objective=v", "schedule=cosine"],
                      ["sampler=euler", "schedule=cosine"], ["sampling.num_inference_steps=1000"]):
        check_combination(make_cfg(*overrides))


def test_check_guidance():
    check_guidance(1.0, 0)
    for s in (0.0, 1.0, 7.5):
        check_guidance(s, 10)
    for s in (0.0, 3.0):
        with pytest.raises(ConfigError, match=r"^sampling\.guidance_scale=.*num_classes=0"):
            check_guidance(s, 0)
    with pytest.raises(ConfigError, match=r"sampling\.guidance_scale"):
        check_guidance(-1.0, 10)
