"""Distillation: one shrunk round of each method (numbers, not just "it ran"), the round cache, exact resume,
validation, and the speed-up at matched FID on synthetic curves with known answers."""
import json
import shutil

import lightning as L
import numpy as np
import pytest
import torch

from bench.data import get_data_info
from bench.distill import load_or_distill, progressive_rounds, round_train
from bench.distill.progressive import ddim_grid, ddim_target
from bench.metrics.cost import CostMeter
from bench.report.speedup import matched_latency, pareto_front, speedup_at_matched_fid
from bench.sampling import build_scheduler, sample
from bench.schema import ConfigError
from bench.training import load_or_train
from bench.validate import validate

pytestmark = pytest.mark.usefixtures("one_thread")

# tiny teacher (v objective, as Salimans & Ho recommend), tiny rounds, CPU
TINY = ("trainer.accelerator=cpu", "device=cpu", "objective=v", "model.block_out_channels=[8,16]",
        "model.norm_num_groups=4", "model.down_block_types=[DownBlock2D,DownBlock2D]",
        "model.up_block_types=[UpBlock2D,UpBlock2D]", "train.max_steps=40", "train.checkpoint_every=0",
        "distill.batch_size=64", "distill.warmup_steps=0")


def _samples(model, cfg, steps, n=64, sampler_cfg=None):
    """bench.sampling.sample with the configured scheduler: the sampler used at evaluation, seeds 0..n-1."""
    info = get_data_info(cfg.data)
    sched = build_scheduler(sampler_cfg or cfg)
    meter = CostMeter("cpu")
    x = torch.cat([b.x for b in sample(model, sched, shape=info.shape, num_samples=n, batch_size=n, seed=0,
                                       num_inference_steps=steps, guidance_scale=1.0, num_classes=info.num_classes,
                                       device="cpu", cost=meter, progress=False)])
    return x, meter.summary()["nfe"]


# ------------------------------------------------------------------------------------------- progressive

def test_ddim_target_inverts_a_ddim_step():
    g = torch.Generator().manual_seed(0)
    z_t, z_s = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    ac_t, ac_s = torch.tensor([0.1, 0.3, 0.5]), torch.tensor([0.4, 0.6, 1.0])  # the last lands on x0 (ᾱ = 1)
    a_t, s_t, a_s, s_s = ac_t.sqrt(), (1 - ac_t).sqrt(), ac_s.sqrt(), (1 - ac_s).sqrt()
    x = ddim_target(z_t, z_s, a_t, s_t, a_s, s_s)
    eps = (z_t - a_t.view(-1, 1, 1, 1) * x) / s_t.view(-1, 1, 1, 1)  # DDIM eq. 12 with η = 0
    torch.testing.assert_close(a_s.view(-1, 1, 1, 1) * x + s_s.view(-1, 1, 1, 1) * eps, z_s)


def test_progressive_grids_are_diffusers_ddim(compose_cfg):
    cfg = compose_cfg("distill=progressive")
    t, ac_t, ac_prev = ddim_grid(cfg, 4)
    sched = build_scheduler(cfg)
    sched.set_timesteps(4)
    assert t.tolist() == sched.timesteps.tolist() == [999, 749, 499, 249]
    # one DDIM step of the scheduler from t lands where ddim_grid says (x0-prediction of a known x0)
    x0, eps = torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2)
    for k in range(4):
        z = ac_t[k].sqrt() * x0 + (1 - ac_t[k]).sqrt() * eps
        v = ac_t[k].sqrt() * eps - (1 - ac_t[k]).sqrt() * x0
        sched.config.prediction_type = "v_prediction"
        out = sched.step(v.float(), int(t[k]), z.float(), eta=0.0).prev_sample
        torch.testing.assert_close(out, (ac_prev[k].sqrt() * x0 + (1 - ac_prev[k]).sqrt() * eps).float())
    assert progressive_rounds(compose_cfg("distill=progressive", "sampling.num_inference_steps=4")) == [32, 16, 8, 4]


def test_progressive_round_matches_two_teacher_steps_with_one(compose_cfg, bench_cache):
    """One round 2 → 1 step: the student's 1-step DDIM sample is much closer to the teacher's 2-step sample than
    the teacher's own 1-step sample (the untrained copy) is."""
    cfg = compose_cfg(*TINY, "distill=progressive", "distill.teacher_steps=2", "sampling.num_inference_steps=1",
                      "distill.max_steps=60", "distill.lr=2e-3")
    validate(cfg)
    student, info = load_or_distill(cfg)
    teacher, tinfo = load_or_train(compose_cfg(*TINY))
    assert info["teacher_key"] == tinfo["model_key"] != info["model_key"]
    assert (info["distill_method"], info["distill_steps"], info["distill_train_steps"]) == ("progressive", 1, 60)
    assert info["distill_seconds"] > 0 and info["train_steps"] == 40 and info["cached"] is False
    target, _ = _samples(teacher, cfg, 2)
    copy_1, _ = _samples(teacher, cfg, 1)
    student_1, nfe = _samples(student, cfg, 1)
    before, after = (copy_1 - target).pow(2).mean().item(), (student_1 - target).pow(2).mean().item()
    print(f"MSE to the teacher's 2-step samples: untrained copy {before:.4f}, student {after:.4f}")
    assert nfe == 1 and after < 0.5 * before


def test_rounds_are_cached_and_reused(compose_cfg, bench_cache, monkeypatch):
    base = (*TINY, "distill=progressive", "distill.teacher_steps=4", "distill.max_steps=3")
    _, info1 = load_or_distill(compose_cfg(*base, "sampling.num_inference_steps=1"))  # rounds 2 and 1
    assert (info1["distill_rounds"], info1["distill_train_steps"]) == (2, 6)
    import bench.training

    monkeypatch.setattr(bench.training, "fit", lambda *a, **k: pytest.fail("a cached round was retrained"))
    _, info2 = load_or_distill(compose_cfg(*base, "sampling.num_inference_steps=2"))  # round 1 of the above
    assert info2["cached"] is True and info2["distill_train_steps"] == 3 and info2["model_key"] != info1["model_key"]
    parent = json.loads((bench_cache / "models" / info1["model_key"] / "config.yaml").read_text().split("parent: ")[1]
                        .split("\n")[0].join('""'))
    assert parent == info2["model_key"]  # the 1-step student was distilled from the cached 2-step one
    m4, info4 = load_or_distill(compose_cfg(*base, "sampling.num_inference_steps=4"))  # no round: the teacher
    assert info4["model_key"] == info4["teacher_key"] and info4["distill_train_steps"] == 0
    # another distill setting is another student, the teacher stays cached
    monkeypatch.undo()
    _, info5 = load_or_distill(compose_cfg(*base, "sampling.num_inference_steps=2", "distill.lr=1e-4"))
    assert info5["model_key"] != info2["model_key"] and info5["teacher_key"] == info2["teacher_key"]


class _Interrupt(L.Callback):
    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == 4:
            raise RuntimeError("simulated interruption")


def test_interrupted_round_resumes_exactly(compose_cfg, bench_cache, tmp_path, monkeypatch):
    import bench.training

    over = (*TINY, "distill=progressive", "distill.teacher_steps=2", "sampling.num_inference_steps=1",
            "distill.max_steps=8", "train.checkpoint_every=4", "train.max_steps=10")
    ref, ref_info = load_or_distill(compose_cfg(*over))
    other = tmp_path / "other"
    (other / "models").mkdir(parents=True)
    shutil.copytree(bench_cache / "models" / ref_info["teacher_key"], other / "models" / ref_info["teacher_key"])
    monkeypatch.setenv("BENCH_CACHE", str(other))
    real_fit = bench.training.fit
    monkeypatch.setattr(bench.training, "fit", lambda *a, **k: real_fit(*a, callbacks=[_Interrupt()], **k))
    with pytest.raises(RuntimeError, match="simulated interruption"):
        load_or_distill(compose_cfg(*over))
    partial = other / "models" / f".{ref_info['model_key']}.partial"
    assert torch.load(partial / "last.ckpt", weights_only=True)["global_step"] == 4
    monkeypatch.setattr(bench.training, "fit", real_fit)
    model, info = load_or_distill(compose_cfg(*over))
    assert info["model_key"] == ref_info["model_key"] and info["distill_train_steps"] == 8 and not partial.exists()
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k


# ------------------------------------------------------------------------------------------- consistency

def test_consistency_function_is_what_lcm_scheduler_computes(compose_cfg, bench_cache):
    from bench.distill.consistency import ConsistencyDistillation

    cfg = compose_cfg(*TINY, "distill=consistency", "distill.num_ddim_timesteps=10")
    info = get_data_info(cfg.data)
    teacher = load_or_train(compose_cfg(*TINY))[0]
    module = ConsistencyDistillation(cfg, info, teacher.state_dict(), round_train(cfg))
    assert module.grid.tolist() == list(range(99, 1000, 100))
    sched = build_scheduler(cfg)
    assert sched.config.original_inference_steps == 10
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    for steps in (1, 4):
        sched.set_timesteps(steps)
        for t in sched.timesteps:  # every LCM timestep is on the training grid
            assert int(t) in module.grid.tolist()
        t = sched.timesteps[-1]  # the last step returns the consistency function itself (no noise)
        sched._step_index = len(sched.timesteps) - 1
        with torch.no_grad():
            out = sched.step(module.model(x, t.float().expand(4), y), t, x).prev_sample
            f = module.consistency_fn(module.model, x, t.expand(4), y)
        torch.testing.assert_close(f, out)
    f0 = module.consistency_fn(module.model, x, torch.zeros(4, dtype=torch.long), y)
    torch.testing.assert_close(f0, x)  # boundary condition f(x, 0) = x


def test_consistency_round_learns_and_samples_with_lcm(compose_cfg, bench_cache, tmp_path):
    """A shrunk round: the consistency loss falls, and the student's 1-step LCM sample moves towards the teacher's
    ODE solution (DDIM, 20 steps) compared with the untrained copy; LCM at 2 steps costs 2 NFE."""
    cfg = compose_cfg(*TINY, "distill=consistency", "distill.num_ddim_timesteps=10", "distill.max_steps=60",
                      "distill.lr=2e-3", "sampling.num_inference_steps=2", "distill.loss=l2")
    validate(cfg)
    student, info = load_or_distill(cfg)
    assert (info["distill_method"], info["distill_steps"], info["distill_train_steps"]) == ("consistency", None, 60)
    curve = json.loads((bench_cache / "models" / info["model_key"] / "meta.json").read_text())["loss_curve"]
    print("loss, first / last 15 steps:", np.mean(curve[:15]), np.mean(curve[-15:]))
    assert np.mean(curve[-15:]) < 0.85 * np.mean(curve[:15])
    teacher = load_or_train(compose_cfg(*TINY))[0]
    ode, _ = _samples(teacher, cfg, 20, sampler_cfg=compose_cfg(*TINY))
    copy_1, _ = _samples(teacher, cfg, 1)
    student_1, nfe1 = _samples(student, cfg, 1)
    _, nfe2 = _samples(student, cfg, 2)
    before, after = (copy_1 - ode).pow(2).mean().item(), (student_1 - ode).pow(2).mean().item()
    print(f"MSE to the teacher's ODE samples: untrained copy {before:.4f}, student {after:.4f}")
    assert (nfe1, nfe2) == (1, 2) and after < 0.8 * before


# ------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("overrides,match", [
    (("distill=progressive", "sampling.num_inference_steps=3"), "sampling.num_inference_steps=3"),
    (("distill=progressive", "sampling.num_inference_steps=128"), "sampling.num_inference_steps=128"),
    (("distill=progressive", "distill.teacher_steps=48"), "distill.teacher_steps=48"),
    (("distill=progressive", "sampler=dpmpp"), "sampler.name='dpmpp'.*ddim with distill.method=progressive"),
    (("distill=progressive", "sampler.timestep_spacing=leading"), "sampler.timestep_spacing='leading'"),
    (("distill=consistency", "sampler=ddim"), "sampler.name='ddim'.*lcm with distill.method=consistency"),
    (("distill=consistency", "objective=flow"), "objective.name"),
    (("distill=consistency", "distill.loss=l1"), "distill.loss='l1'"),
    (("distill=consistency", "sampling.num_inference_steps=65"), "sampling.num_inference_steps=65"),
    (("distill=consistency", "data=toy2d", "model=mlp", "distill.guidance_scale=3"), "distill.guidance_scale=3"),
    (("distill=consistency", "distill.ema_decay=1.0"), "distill.ema_decay=1.0"),
])
def test_bad_distill_settings_fail_in_one_line(compose_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        validate(compose_cfg(*overrides))
    assert "\n" not in str(e.value)


def test_distill_group_selects_the_sampler(compose_cfg):
    assert compose_cfg("distill=consistency").sampler.name == "lcm"
    assert compose_cfg("distill=progressive", "sampler=euler", "distill=progressive").sampler.name == "euler"
    assert compose_cfg("distill=progressive").sampler.name == compose_cfg().sampler.name == "ddim"
    assert compose_cfg().distill.method == "none"
    for steps in (1, 64):  # the ends of the distill_vs_ddim grid are valid for all three
        for d in ("none", "progressive", "consistency"):
            validate(compose_cfg(f"distill={d}", f"sampling.num_inference_steps={steps}"))


# ------------------------------------------------------------------------------------------- speed-up

# teacher: latency doubles with steps, FID halves — log-latency exactly linear in log-FID, piecewise linear in FID
LAT, FID = [1.0, 2.0, 4.0, 8.0, 16.0], [80.0, 40.0, 20.0, 10.0, 5.0]


def test_speedup_interpolates_log_latency_in_fid():
    s = speedup_at_matched_fid(LAT, FID, 0.5, 20.0)  # exactly the 4-latency point
    assert (s.bound, s.speedup) == ("=", 8.0)
    s = speedup_at_matched_fid(LAT, FID, 0.25, 15.0)  # halfway 20 → 10: latency 4·2^(1/2)
    assert s.bound == "=" and s.teacher_latency == pytest.approx(4 * 2**0.5) and s.speedup == pytest.approx(16 * 2**0.5)
    s = speedup_at_matched_fid(LAT, FID, 0.5, 2.0)  # better than the teacher ever gets: a lower bound
    assert (s.bound, s.speedup, s.text()) == (">=", 32.0, "≥ 32.0×")
    s = speedup_at_matched_fid(LAT, FID, 0.5, 100.0)  # worse than the 1-step teacher: an upper bound
    assert (s.bound, s.speedup) == ("<=", 2.0)


def test_speedup_uses_the_teachers_monotone_front():
    lat, fid = LAT + [32.0, 0.5], FID + [6.0, 200.0]  # more steps got worse; an even cheaper, awful point
    assert pareto_front(lat, fid)[0].tolist() == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert matched_latency(lat, fid, 5.5) == pytest.approx((16 * 2 ** (-0.1), "="))
    assert speedup_at_matched_fid(lat[::-1], fid[::-1], 1.0, 20.0).speedup == 4.0  # order does not matter


def test_speedup_uncertainty_matches_the_delta_method():
    """FID std σ on the student only: d log(lat)/dFID = -ln2/10 between 20 and 10, so std(speed-up) ≈
    speed-up · ln2/10 · σ for small σ."""
    s = speedup_at_matched_fid(LAT, FID, 0.25, 15.0, teacher_fid_std=[0.0] * 5, student_fid_std=0.5, n_boot=4000)
    expect = s.speedup * np.log(2) / 10 * 0.5
    assert s.std == pytest.approx(expect, rel=0.1) and s.lo < s.speedup < s.hi and s.frac_bound == 0.0
    assert "±" in s.text()
    t = speedup_at_matched_fid(LAT, FID, 0.25, 15.0, teacher_fid_std=[1.0] * 5, student_fid_std=0.5, n_boot=4000)
    assert t.std > s.std  # teacher noise adds to it
    b = speedup_at_matched_fid(LAT, FID, 0.5, 4.9, teacher_fid_std=[1.0] * 5, student_fid_std=1.0, n_boot=2000)
    assert b.bound == ">=" and 0.2 < b.frac_bound < 0.8  # at the edge: about half the draws cannot be matched
