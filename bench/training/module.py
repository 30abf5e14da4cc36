"""The Lightning module that trains a denoiser on one objective, with CFG label dropout, warm-up and EMA."""
from __future__ import annotations

import copy
import time

import lightning as L
import torch
import torch.nn.functional as F

from bench.models import LatentDenoiser, build_model

from . import objectives as obj


class DiffusionModule(L.LightningModule):
    """Trains ``build_model(model_cfg, info)`` with :func:`objectives.diffusion_loss` on ``objective_cfg`` /
    ``schedule_cfg``, optimised per ``train`` (the ``train.*`` settings: lr, weight_decay, warmup_steps, ema_decay,
    cond_drop_prob, seed); ``self.ema`` holds the EMA weights used for sampling. All per-step randomness (t, noise,
    label dropout) comes from a generator seeded by (train.seed, global_step), so a resumed run repeats an
    uninterrupted one exactly."""

    def __init__(self, model_cfg, objective_cfg, schedule_cfg, train, info, model: torch.nn.Module | None = None):
        super().__init__()
        self.objective_cfg, self.schedule_cfg, self.train_cfg, self.info = objective_cfg, schedule_cfg, train, info
        self.model = build_model(model_cfg, info) if model is None else model  # model: another network (classifier)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        if objective_cfg.name != "flow":
            self.register_buffer("alphas_cumprod", obj.alphas_cumprod(schedule_cfg), persistent=False)
        else:
            self.alphas_cumprod = None
        obj.check_loss_weighting(objective_cfg)  # fail on a bad weighting before training
        self.loss_history: list = []  # per step; tensors until read (no GPU sync per step)
        self.train_seconds = 0.0  # accumulated across resumes (stored in the checkpoint)
        self._t0: float | None = None

    @classmethod
    def from_config(cls, cfg, info) -> DiffusionModule:
        """The module a composed config trains (its model, objective, schedule and train groups)."""
        return cls(cfg.model, cfg.objective, cfg.schedule, cfg.train, info)

    def forward(self, x, t, class_labels=None):
        return self.model(x, t, class_labels)

    def training_step(self, batch, batch_idx):
        x0, y = batch
        g = torch.Generator(device=x0.device).manual_seed(obj.step_seed(self.train_cfg.seed, self.global_step))
        if isinstance(self.model, LatentDenoiser):  # latent diffusion: x0 is the scaled latent of its frozen VAE
            x0 = self.model.encode(x0, g)
        loss = self.compute_loss(x0, self.drop_labels(y, g), g)
        # the batch's loss (under DDP the mean of the ranks' equal shares, as their averaged gradients are)
        logged = self.all_gather(loss.detach()).mean() if self.world() > 1 else loss.detach()
        self.loss_history.append(logged)
        self.log("loss", logged, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def world(self) -> int:
        return int(self.trainer.world_size) if self._trainer is not None else 1

    def rows(self) -> slice | None:
        """This process's rows of the global batch under DDP (rank::world; validation makes the shares equal, so
        the average of the ranks' gradients is the 1-process gradient); None in one process."""
        w = self.world()
        return slice(int(self.trainer.global_rank), None, w) if w > 1 else None

    def compute_loss(self, x0: torch.Tensor, labels, g: torch.Generator) -> torch.Tensor:
        """The objective's loss on one batch (distillation modules override this, and only this; a module that does
        not take ``rows()`` computes the whole batch on every rank: the same gradient, no speed-up)."""
        return obj.diffusion_loss(self.model, x0, labels, self.objective_cfg, self.schedule_cfg, g,
                                  self.alphas_cumprod, rows=self.rows())

    def drop_labels(self, y: torch.Tensor, g: torch.Generator) -> torch.Tensor | None:
        """Class labels with CFG dropout: each replaced by the null class with probability train.cond_drop_prob
        (None for an unconditional model)."""
        if not self.info.num_classes:
            return None
        drop = torch.rand(y.shape[0], generator=g, device=y.device) < float(self.train_cfg.cond_drop_prob)
        return torch.where(drop, torch.full_like(y, self.info.num_classes), y)

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        self.update_ema()  # here, not on_train_batch_end: checkpoints are written before that hook runs

    @torch.no_grad()
    def update_ema(self) -> None:
        """θ_ema ← d θ_ema + (1 - d) θ with the warm-up d = min(ema_decay, (1 + n)/(10 + n)) (TF's
        ExponentialMovingAverage ``num_updates``), so early weights do not dominate a short run."""
        n = float(self.ema_updates)
        d = min(float(self.train_cfg.ema_decay), (1 + n) / (10 + n))
        ema_p, p = list(self.ema.parameters()), list(self.model.parameters())
        torch._foreach_lerp_(ema_p, [q.detach() for q in p], 1.0 - d)
        for be, b in zip(self.ema.buffers(), self.model.buffers()):
            be.copy_(b)
        self.ema_updates += 1

    def configure_optimizers(self):
        tc = self.train_cfg
        opt = torch.optim.AdamW(self.model.parameters(), lr=float(tc.lr), weight_decay=float(tc.weight_decay))
        warmup = int(tc.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- bookkeeping kept in the checkpoint: wall time and the loss curve survive a resume ---
    def on_train_start(self) -> None:
        self._t0 = time.perf_counter()

    def elapsed(self) -> float:
        return self.train_seconds + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def losses(self) -> list[float]:
        self.loss_history = [float(v) for v in self.loss_history]
        return self.loss_history

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["bench"] = {"train_seconds": self.elapsed(), "loss_history": self.losses()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("bench", {})
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.loss_history = list(state.get("loss_history", []))


class VAEModule(DiffusionModule):
    """The first stage of latent diffusion (Rombach et al. 2022, §3; a VAE, Kingma & Welling 2014): a diffusers
    ``AutoencoderKL`` trained on ||x - D(z)||² / pixels + ``kl_weight`` · KL(q(z | x) || N(0, I)) / pixels, z ~ q(z | x)
    drawn with the step's generator (LDM's KL-regularised autoencoder without its perceptual and GAN terms). Optimiser,
    warm-up, EMA, seeded steps and exact resume are DiffusionModule's, with ``train`` for the VAE's settings."""

    def __init__(self, cfg, info, vae, train, kl_weight: float):
        super().__init__(cfg.model, cfg.objective, cfg.schedule, train, info, model=vae)
        self.kl_weight = float(kl_weight)

    def drop_labels(self, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return y  # unconditional: labels are not used

    def compute_loss(self, x0: torch.Tensor, labels, g: torch.Generator) -> torch.Tensor:
        posterior = self.model.encode(x0).latent_dist
        rec = self.model.decode(posterior.sample(generator=g)).sample
        pixels = x0[0].numel()
        return F.mse_loss(rec.float(), x0.float()) + self.kl_weight * posterior.kl().float().mean() / pixels
