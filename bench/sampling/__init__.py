"""Sampling: one loop (loop.py) over a registry of samplers, each a stock diffusers scheduler (samplers.py),
seeded per image (rng.py)."""
from bench.sampling.loop import Batch, ClassifierGuidance, NonFiniteError, classifier_guided, guided, sample
from bench.sampling.rng import image_generators, initial_noise
from bench.sampling.samplers import (
    SAMPLERS,
    build_sampler,
    build_scheduler,
    check_combination,
    check_guidance,
    lcm_grid,
    scheduler_config,
)

__all__ = ["Batch", "ClassifierGuidance", "NonFiniteError", "sample", "guided", "classifier_guided",
           "image_generators", "initial_noise", "SAMPLERS",
           "build_sampler", "build_scheduler", "check_combination", "check_guidance", "lcm_grid", "scheduler_config"]
