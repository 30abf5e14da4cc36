import json
import time

import lightning as L
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel
from safetensors.torch import load_file

from bench.data import get_data_info
from bench.keys import model_key
from bench.schedule import ddpm_scheduler
from bench.schema import ConfigError
from bench.training import DiffusionModule, fit, load_or_train, objectives as obj, partial_dir

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- objective math vs diffusers (no training)

@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
def test_forward_process_and_targets_match_diffusers(compose_cfg, schedule):
    cfg = compose_cfg(f"schedule={schedule}")
    sched = ddpm_scheduler(cfg.schedule)
    assert sched.config.beta_schedule == {"cosine": "squaredcos_cap_v2"}.get(schedule, schedule)
    ac = obj.alphas_cumprod(cfg.schedule)
    assert ac.shape == (1000,) and (ac[1:] < ac[:-1]).all()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 1, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    alpha, sigma = ac[t].sqrt(), (1 - ac[t]).sqrt()
    torch.testing.assert_close(obj.add_noise(x0, eps, alpha, sigma), sched.add_noise(x0, eps, t))
    torch.testing.assert_close(obj.target("v", x0, eps, alpha, sigma), sched.get_velocity(x0, eps, t))
    tt, a, s = obj.sample_noise_level("eps", cfg.schedule, 4096, torch.Generator().manual_seed(1), "cpu", ac)
    assert tt.dtype == torch.float32 and tt.min() >= 0 and tt.max() <= 999 and (tt == tt.round()).all()
    torch.testing.assert_close(a, ac[tt.long()].sqrt())
    assert abs(tt.mean().item() - 499.5) < 15


@pytest.mark.parametrize("objective", ["eps", "v", "x0"])
def test_ddim_step_with_oracle_output_lands_on_the_forward_process(objective):
    """An exact model (its output = objective.target) makes a deterministic DDIM step (Song et al. 2021, eq. 12)
    land on alpha_prev x0 + sigma_prev eps: training targets and diffusers' prediction_type agree."""
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                          prediction_type=obj.PREDICTION_TYPE[objective])
    sched.set_timesteps(10)
    ac = sched.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    t, t_prev = int(sched.timesteps[3]), int(sched.timesteps[4])
    a, s = ac[t].sqrt().expand(2), (1 - ac[t]).sqrt().expand(2)
    x_t = obj.add_noise(x0, eps, a, s)
    out = obj.target(objective, x0, eps, a, s)
    prev = sched.step(out, t, x_t, eta=0.0).prev_sample
    torch.testing.assert_close(prev, ac[t_prev].sqrt() * x0 + (1 - ac[t_prev]).sqrt() * eps, atol=1e-5, rtol=1e-5)
    x0_hat, eps_hat = obj.to_x0_eps(objective, out, x_t, a, s)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_hat, eps, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_matches_flow_match_euler_scheduler(compose_cfg, shift):
    cfg = compose_cfg("objective=flow", f"schedule.flow_shift={shift}")
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    grid = torch.linspace(1, 1000, 1000).flip(0) / 1000  # the scheduler's unshifted training sigmas
    torch.testing.assert_close(obj.shift_sigmas(grid, shift), sched.sigmas[:-1] if len(sched.sigmas) > 1000
                               else sched.sigmas, atol=1e-6, rtol=1e-5)
    sched.set_timesteps(8)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    for i in (0, 3, 7):
        sig, sig_next = sched.sigmas[i], sched.sigmas[i + 1]
        x_t = obj.add_noise(x0, eps, (1 - sig).expand(3), sig.expand(3))
        v = obj.target("flow", x0, eps, (1 - sig).expand(3), sig.expand(3))
        sched._step_index = i  # step i of the schedule, as a sampling loop would be
        prev = sched.step(v, sched.timesteps[i], x_t).prev_sample  # x + (σ_next - σ) v
        torch.testing.assert_close(prev, (1 - sig_next) * x0 + sig_next * eps, atol=1e-5, rtol=1e-5)
        assert torch.isclose(sched.timesteps[i], sig * 1000)  # model time = sigma * T
    t, a, s = obj.sample_noise_level("flow", cfg.schedule, 20_000, torch.Generator().manual_seed(0), "cpu")
    torch.testing.assert_close(t, s * 1000) and torch.testing.assert_close(a, 1 - s)
    # shifted sigmas: P(σ' <= shift(0.5)) = 0.5
    assert abs((s <= obj.shift_sigmas(torch.tensor(0.5), shift)).float().mean().item() - 0.5) < 0.02


def test_min_snr_weights(compose_cfg):
    alpha = torch.tensor([1.0, 0.9, 0.5, 0.1, 0.0])
    sigma = (1 - alpha**2).sqrt()
    sigma[0] = 1e-3
    snr = alpha**2 / sigma**2
    gamma = 5.0
    for objective, want in [("eps", torch.minimum(snr, torch.tensor(gamma)) / snr),
                            ("x0", torch.minimum(snr, torch.tensor(gamma))),
                            ("v", torch.minimum(snr, torch.tensor(gamma)) / (snr + 1))]:
        cfg = compose_cfg(f"objective={objective}", "objective.loss_weighting=min_snr")
        w = obj.loss_weight(cfg.objective, alpha, sigma)
        assert torch.isfinite(w).all()
        torch.testing.assert_close(w[:-1], want[:-1])
    assert obj.loss_weight(compose_cfg("objective.loss_weighting=min_snr").objective, alpha, sigma)[-1] == 1.0
    assert (obj.loss_weight(compose_cfg().objective, alpha, sigma) == 1).all()
    with pytest.raises(ConfigError, match="objective.loss_weighting='min_snr' is not allowed: uniform for "
                                          "objective=flow"):
        obj.loss_weight(compose_cfg("objective=flow", "objective.loss_weighting=min_snr").objective, alpha, sigma)


def test_ema_warmup_decay(compose_cfg):
    cfg = compose_cfg("data=toy2d", "model=mlp", "train.ema_decay=0.9")
    module = DiffusionModule.from_config(cfg, get_data_info(cfg.data))
    p, pe = next(module.model.parameters()), next(module.ema.parameters())
    assert torch.equal(p, pe) and not pe.requires_grad
    with torch.no_grad():
        pe.zero_(), p.fill_(1.0)
    module.update_ema()  # n = 0: d = min(0.9, 1/10) = 0.1
    torch.testing.assert_close(pe, torch.full_like(pe, 0.9))
    module.ema_updates.fill_(1000)
    module.update_ema()  # d = 0.9
    torch.testing.assert_close(pe, torch.full_like(pe, 0.9 + 0.1 * 0.1))


def test_model_key_covers_training_config_only(compose_cfg):
    base = model_key(compose_cfg())
    assert model_key(compose_cfg("train.lr=1e-3")) != base
    assert model_key(compose_cfg("objective=v")) != base
    assert model_key(compose_cfg("schedule=cosine")) != base
    for same in ("trainer.enable_progress_bar=true", "data.num_workers=2", "sampler=dpmpp", "sampling.seed=3"):
        assert model_key(compose_cfg(same)) == base, same


def test_keys_added_later_are_elided_at_their_default(compose_cfg):
    """train.accumulate_grad_batches=1 (the default) leaves model and cell keys as they were before the key existed;
    any other value is a new model and a new cell."""
    from bench.keys import cell_config, cell_key, model_key_config as key_config

    cfg = compose_cfg()
    assert "accumulate_grad_batches" not in key_config(cfg)["train"]
    assert "accumulate_grad_batches" not in cell_config(cfg)["train"]
    two = compose_cfg("train.accumulate_grad_batches=2")
    assert key_config(two)["train"]["accumulate_grad_batches"] == 2
    assert model_key(two) != model_key(cfg) and cell_key(two) != cell_key(cfg)


# ---------------------------------------------------------------- training (tiny, CPU)

CPU = ("trainer.accelerator=cpu", "device=cpu")
# no attention: 3 short trainings stay fast
TINY_UNET = ("model.block_out_channels=[8,16]", "model.norm_num_groups=4",
             "model.down_block_types=[DownBlock2D,DownBlock2D]", "model.up_block_types=[UpBlock2D,UpBlock2D]")


def test_digits_smoke_trains_then_hits_cache(compose_cfg, bench_cache, monkeypatch):
    cfg = compose_cfg(*CPU, "train.batch_size=32")
    t0 = time.perf_counter()
    model, info = load_or_train(cfg)
    train_s = time.perf_counter() - t0
    assert info["cached"] is False and info["train_steps"] == 30 and info["path"].startswith(str(bench_cache))
    assert info["model_key"] == model_key(cfg) and info["num_params"] == sum(p.numel() for p in model.parameters())
    assert not model.training and next(model.parameters()).device.type == "cpu"
    files = {p.name for p in (bench_cache / "models" / info["model_key"]).iterdir()}
    assert {"model.safetensors", "config.yaml", "meta.json", "last.ckpt"} <= files
    assert not partial_dir(cfg).exists()
    meta = json.loads((bench_cache / "models" / info["model_key"] / "meta.json").read_text())
    curve = meta["loss_curve"]
    print(f"digits smoke: {train_s:.1f}s, loss first 5 {np.mean(curve[:5]):.3f} -> last 5 {np.mean(curve[-5:]):.3f}")
    assert len(curve) == 30 and np.mean(curve[-5:]) < 0.6 * np.mean(curve[:5])
    assert meta["versions"]["torch"] == torch.__version__ and meta["train_seconds"] > 0

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr("bench.training.denoiser.fit", no_training)  # a hit loads; it never reaches the trainer
    t0 = time.perf_counter()
    model2, info2 = load_or_train(cfg)
    print(f"cache hit: {time.perf_counter() - t0:.2f}s")
    assert info2["cached"] is True and info2["train_steps"] == 30 and info2["train_seconds"] == info["train_seconds"]
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), k
    # the saved weights are the EMA, not the raw weights (decay 0.999 with warm-up over 30 steps)
    ckpt = torch.load(bench_cache / "models" / info["model_key"] / "last.ckpt", weights_only=True)
    raw = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    ema = load_file(str(bench_cache / "models" / info["model_key"] / "model.safetensors"))
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert model(x, torch.full((4,), 500.0), torch.arange(4)).shape == x.shape


class _Interrupt(L.Callback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated interruption")


def test_interrupted_training_resumes_exactly(compose_cfg, bench_cache, tmp_path, monkeypatch):
    overrides = (*CPU, "train.max_steps=20", "train.checkpoint_every=10", "train.batch_size=8",
                 "train.cond_drop_prob=0.5", "data.hflip=true", "train.warmup_steps=5", *TINY_UNET)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "uninterrupted"))
    ref_model, ref_info = load_or_train(compose_cfg(*overrides))
    monkeypatch.setenv("BENCH_CACHE", str(bench_cache))
    cfg = compose_cfg(*overrides)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        fit(lambda: DiffusionModule.from_config(cfg, get_data_info(cfg.data)), cfg.data, cfg.train, cfg.trainer,
            partial_dir(cfg), callbacks=[_Interrupt(at_step=10)])
    ckpt = torch.load(partial_dir(cfg) / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 10
    model, info = load_or_train(cfg)
    assert info["cached"] is False and info["train_steps"] == 20 and not partial_dir(cfg).exists()
    meta = json.loads((bench_cache / "models" / info["model_key"] / "meta.json").read_text())
    ref_meta = json.loads((tmp_path / "uninterrupted" / "models" / info["model_key"] / "meta.json").read_text())
    assert meta["loss_curve"] == ref_meta["loss_curve"]
    for (k, a), (_, b) in zip(model.state_dict().items(), ref_model.state_dict().items()):
        assert torch.equal(a, b), k


def test_another_process_finishing_first_wins(compose_cfg, bench_cache, monkeypatch):
    """If the final dir appears while we train (a process that bypassed the lock), keep theirs, drop ours."""
    import shutil

    import bench.training.denoiser as cache

    cfg = compose_cfg(*CPU, "data=toy2d", "model=mlp", "train.max_steps=5", "data.num_train=256",
                      "train.batch_size=64")
    real_fit = cache.fit

    info = get_data_info(cfg.data)

    def fit_then_race(make_module, data_cfg, train, trainer_cfg, workdir, callbacks=(), logger=False):
        module = real_fit(make_module, data_cfg, train, trainer_cfg, workdir, callbacks, logger)
        theirs = bench_cache / "models" / model_key(cfg)
        theirs.mkdir()
        cache.write_model_dir(module, cfg, info, theirs)
        (theirs / "meta.json").write_text(json.dumps({**json.loads((theirs / "meta.json").read_text()),
                                                      "train_seconds": 123.0}))
        return module

    monkeypatch.setattr(cache, "fit", fit_then_race)
    model, info = load_or_train(cfg)
    assert info["train_seconds"] == 123.0 and not partial_dir(cfg).exists()
    assert model(torch.zeros(2, 2), torch.tensor([1.0, 2.0])).shape == (2, 2)
    shutil.rmtree(bench_cache / "models")


def test_flow_on_toy2d_reduces_loss(compose_cfg, bench_cache):
    cfg = compose_cfg(*CPU, "data=toy2d", "model=mlp", "objective=flow", "train.max_steps=300",
                      "train.batch_size=256", "train.lr=1e-3", "train.cond_drop_prob=0", "data.num_train=5000")
    t0 = time.perf_counter()
    model, info = load_or_train(cfg)
    curve = json.loads((bench_cache / "models" / info["model_key"] / "meta.json").read_text())["loss_curve"]
    first, last = np.mean(curve[:10]), np.mean(curve[-30:])
    print(f"flow toy2d 300 steps: {time.perf_counter() - t0:.1f}s, loss {first:.3f} -> {last:.3f}")
    # E|eps - x0|^2 = 2 for an untrained (~zero) model on unit-variance data; conditional flow matching keeps an
    # irreducible part (~1 here), so a fitted velocity field ends near 1.3-1.5 after 300 steps
    assert first > 1.7 and last < 0.8 * first
    assert model(torch.zeros(3, 2), torch.tensor([0.0, 500.0, 1000.0])).shape == (3, 2)


def test_pretrained_is_loaded_not_trained(compose_cfg, bench_cache, tmp_path):
    torch.manual_seed(0)
    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=4).save_pretrained(tmp_path / "unet")
    cfg = compose_cfg(*CPU, f"model.pretrained={tmp_path / 'unet'}")
    model, info = load_or_train(cfg)
    assert info["train_steps"] == 0 and info["cached"] is True and info["path"] == str(tmp_path / "unet")
    assert not (bench_cache / "models").exists()
    assert model_key(compose_cfg(*CPU, f"model.pretrained={tmp_path / 'unet'}", "train.lr=1")) == info["model_key"]
    assert model_key(compose_cfg(*CPU, f"model.pretrained={tmp_path / 'unet'}", "objective=v")) != info["model_key"]
    assert model(torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0]), torch.tensor([0, 10])).shape == (2, 1, 8, 8)


@pytest.mark.slow
def test_toy2d_default_training_budget(compose_cfg, bench_cache):
    cfg = compose_cfg(*CPU, "experiment=toy2d", "hydra.mode=RUN", "train.max_steps=2000",
                      "trainer.enable_progress_bar=false")
    t0 = time.perf_counter()
    _, info = load_or_train(cfg)
    seconds = time.perf_counter() - t0
    curve = json.loads((bench_cache / "models" / info["model_key"] / "meta.json").read_text())["loss_curve"]
    print(f"toy2d eps 2000 steps x 512: {seconds:.1f}s, loss {curve[0]:.3f} -> {curve[-1]:.3f}")
    # the wall time is printed, not asserted: on a shared 2-core box it measures the neighbours (benchmarks own speed)
    assert curve[-1] < 0.7 * curve[0]


class _Seen(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.accumulate = trainer.accumulate_grad_batches
        self.max_time = trainer._max_time if hasattr(trainer, "_max_time") else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches = batch_idx + 1


def test_accumulate_grad_batches_is_honoured(compose_cfg, tmp_path):
    """One optimizer step per 2 batches: 3 steps consume 6 batches."""
    cfg = compose_cfg(*CPU, "data=toy2d", "model=mlp", "train.max_steps=3", "data.num_train=256",
                      "train.batch_size=16", "train.accumulate_grad_batches=2", "train.checkpoint_every=0")
    seen = _Seen()
    module = fit(lambda: DiffusionModule.from_config(cfg, get_data_info(cfg.data)), cfg.data, cfg.train, cfg.trainer,
                 tmp_path, callbacks=[seen])
    assert module.trained_steps == 3 and seen.accumulate == 2 and seen.batches == 6


class _StartStep(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step


class _Slow(L.Callback):
    def on_train_batch_end(self, *args):
        time.sleep(0.4)


def test_max_time_stops_short_and_the_next_run_resumes(compose_cfg, tmp_path):
    """trainer.max_time ends training before train.max_steps: TrainingStopped names the step (bench exits 3, nothing
    published), and the same config given time resumes the checkpoint to the full step count."""
    from bench.training import TrainingStopped

    base = (*CPU, "data=toy2d", "model=mlp", "train.max_steps=30", "data.num_train=256", "train.batch_size=64",
            "train.checkpoint_every=0")
    cfg = compose_cfg(*base, "trainer.max_time=00:00:00:01")
    info = get_data_info(cfg.data)
    with pytest.raises(TrainingStopped, match=r"training stopped at step \d+ of train.max_steps=30 "
                                              r"\(trainer.max_time=00:00:00:01\)"):
        fit(lambda: DiffusionModule.from_config(cfg, info), cfg.data, cfg.train, cfg.trainer, tmp_path,
            callbacks=[_Slow()])
    step = torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < step < 30
    assert model_key(compose_cfg(*base)) == model_key(cfg)  # max_time does not change the model: same key
    again = compose_cfg(*base)
    start = _StartStep()
    module = fit(lambda: DiffusionModule.from_config(again, info), again.data, again.train, again.trainer, tmp_path,
                 callbacks=[start])
    assert start.step == step and module.trained_steps == 30  # resumed from the checkpoint, not restarted


def test_training_stopped_exits_3_without_a_row(tmp_path, capsys, monkeypatch):
    import bench.training.denoiser as cache
    from bench.training import TrainingStopped
    from reliability_helpers import TOY
    from test_bad_inputs import cli

    def stopped(*a, **k):
        raise TrainingStopped("training stopped at step 7 of train.max_steps=3000 (trainer.max_time=00:00:01:00)")

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "fit", stopped)
    code, err, out = cli(tmp_path, capsys, monkeypatch, *TOY, "hydra.mode=RUN", "trainer.max_time=00:00:01:00")
    assert code == 3 and "training stopped at step 7" in err[-1]
    assert not (out / "toy2d" / "results.jsonl").exists()


@pytest.mark.parametrize("override, fragment", [
    ("trainer.precision=foo", "trainer.precision='foo' is not allowed: transformer-engine | "),
    ("trainer.accelerator=abacus", "trainer.accelerator='abacus' is not allowed: auto | gpu | "),
    ("trainer.strategy=bogus", "trainer.strategy='bogus' is not allowed: auto or a Lightning strategy name"),
    ("trainer.precision=16-mixed", "trainer.precision='16-mixed' is not allowed: bf16-mixed on this accelerator"),
])
def test_lightning_knobs_are_checked_before_any_work(tmp_path, capsys, monkeypatch, override, fragment):
    """Before: trainer.precision=foo was Lightning's ValueError (a traceback) after run.log was in the output folder
    and a .partial directory and a lock in the model cache. Now: one line, exit 2, nothing written anywhere."""
    from reliability_helpers import TOY
    from test_bad_inputs import cli

    cache = tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    code, err, out = cli(tmp_path, capsys, monkeypatch, *TOY, "hydra.mode=RUN", "device=cpu", "trainer.accelerator=cpu"
                         if "accelerator" not in override else "device=cpu", override)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"bench: error: {fragment}"), err
    assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))
    assert not cache.exists() or not any(cache.rglob("*")), list(cache.rglob("*"))
