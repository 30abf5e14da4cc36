"""Where a run executes: device choice, determinism switches, hardware and library versions (recorded in rows)."""
from __future__ import annotations

import logging
import os
import platform
import subprocess
import warnings
from pathlib import Path

import diffusers
import torch

import bench


def resolve_device(name: str = "auto") -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def set_determinism(on: bool) -> None:
    """CPU runs are deterministic as they are; on GPU, `sampling.deterministic=true` also pins cuDNN and turns
    TF32 off (slower), so samples and scores repeat bit for bit on the same GPU and software."""
    if on:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def hardware(device: str) -> str:
    """The GPU's name, or the CPU model with its core and torch thread counts (threads change float reductions)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} x{os.cpu_count()} threads={torch.get_num_threads()}"


def git_sha(default: str = "unknown") -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or default
    except Exception:
        return default


def versions() -> dict:
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "bench": bench.__version__,
            "git_sha": git_sha()}


class _DropMessages(logging.Filter):
    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# Lightning logs its info lines through the rank-zero logger of the package that imported it last
_LIGHTNING_RANK_ZERO = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                        "lightning_utilities.core.rank_zero")


def quiet_console() -> None:
    """Third-party noise off the console of a run, in one place (called by the console entry points, not on import):
    Lightning's advertising tip, a deprecation inside Lightning that its users cannot act on, and W&B's own console
    lines (the tracker asks W&B for silent runs anyway; ``WANDB_SILENT=false`` brings them back). Lightning's device
    lines, its other warnings and every warning of the harness stay. Idempotent."""
    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    for name in _LIGHTNING_RANK_ZERO:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages("\N{ELECTRIC LIGHT BULB} Tip:"))


def quiet_wandb() -> None:
    """Before Lightning starts a W&B run: Lightning always passes ``anonymous`` (None by default), and W&B warns that
    the setting is obsolete before the run's own ``silent`` setting applies. W&B's console is silent until its
    process-wide setup, which then follows ``WANDB_SILENT``."""
    import wandb  # lazy: only an enabled tracker imports it

    wandb.termsetup(wandb.Settings(silent=True), None)
