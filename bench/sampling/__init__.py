"""Sampling: one loop (loop.py) over a registry of diffusers schedulers (schedulers.py), seeded per image (rng.py)."""
from bench.sampling.loop import Batch, NonFiniteError, guided, sample
from bench.sampling.rng import image_generators, initial_noise
from bench.sampling.schedulers import (
    OBJECTIVES,
    SCHEDULERS,
    build_scheduler,
    check_combination,
    check_guidance,
    scheduler_config,
)

__all__ = ["Batch", "NonFiniteError", "sample", "guided", "image_generators", "initial_noise", "OBJECTIVES",
           "SCHEDULERS", "build_scheduler", "check_combination", "check_guidance", "scheduler_config"]
