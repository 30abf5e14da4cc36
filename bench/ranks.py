"""How a multi-process run starts its ranks on CPU: forked from a preloaded forkserver, seeing what spawned ranks see.

Lightning's ``ddp_spawn`` starts every rank as a fresh interpreter that re-imports torch, Lightning, diffusers and the
harness (~8 CPU-s a rank, at every launch: each cell of a sweep on ``sampling.devices=2``, each training on
``trainer.devices=2``). A plain fork of the launching process is not an option: a forked rank deadlocks in its first
parallel op when the parent has used an OpenMP thread pool (seen as ranks idle in ``load_state_dict``). A forkserver
is neither: it imports the harness once, never computes, and forks each rank from there.

What a spawned rank gets and a forked-from-server one would not, and how it gets it here:

- the launching process's environment and working directory *now* (the server's are those of its own start):
  :class:`SpawnLike` carries them and the rank restores them, keeping what Lightning has set in the rank (ranks,
  address, port);
- torch's global state (determinism flags, cuDNN benchmark, RNG states): Lightning's own snapshot, as spawn passes it;
- modules: torch passes tensors to forkserver ranks through shared memory, so without a copy the ranks would train
  one set of weights in place together; a training rank copies its modules as Lightning does for spawn on CPU. A
  sampling job travels :class:`ByValue` instead: shared memory would send one file descriptor per tensor, and the
  forkserver refuses more than 256 (a Stable Diffusion pipeline has more).

CUDA keeps ``ddp_spawn``: CUDA is initialised in the launching process by then, and Lightning refuses to fork after.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle  # ByValue only: an object this process hands its own ranks, never a file

import torch
from lightning.fabric.strategies.launchers.multiprocessing import (
    _disable_module_memory_sharing,
    _GlobalStateSnapshot,
)
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

# what Lightning sets in a rank's environment (the rest is the launching process's, as a spawned rank has it)
RANK_ENV = ("LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# what the server imports once: every rank's code (sampling, training, scoring)
PRELOAD = ["bench.distributed", "bench.training"]


def forkserver(accelerator: str) -> bool:
    """Whether ranks on `accelerator` start from the forkserver (CPU, where the platform has one); arms it if so."""
    if accelerator != "cpu" or "forkserver" not in mp.get_all_start_methods():
        return False
    mp.set_forkserver_preload(PRELOAD)  # read when the server starts (once per process)
    return True


class SpawnLike:
    """Captured in the launching process; :meth:`restore` in a forked rank makes it see what a spawned rank sees."""

    def __init__(self):
        self.env, self.cwd = dict(os.environ), os.getcwd()
        self.state = _GlobalStateSnapshot.capture()

    def restore(self, keep_rank_env: bool = True) -> None:
        """``keep_rank_env``: keep what Lightning has set in this rank already (the server's values otherwise)."""
        own = {k: os.environ[k] for k in RANK_ENV if k in os.environ} if keep_rank_env else {}
        os.environ.clear()
        os.environ.update({**self.env, **own})
        os.chdir(self.cwd)  # relative paths (out_dir=runs) mean what they mean to the launching process
        self.state.restore()
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:  # a spawned rank's interpreter reads it at start-up
            torch.set_num_threads(int(threads))


class ByValue:
    """An object handed to this process's own forkserver ranks as bytes (what multiprocessing would pickle anyway,
    without torch's one file descriptor per tensor). Built from an object in memory, never from a file."""

    def __init__(self, obj):
        self._bytes = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def get(self):
        return pickle.loads(self._bytes)


class _ForkserverLauncher(_MultiProcessingLauncher):
    """Lightning's multiprocessing launcher, forkserver ranks made spawn-like (environment, global state, modules
    copied out of shared memory)."""

    def launch(self, function, *args, trainer=None, **kwargs):
        os.environ["MASTER_PORT"] = str(self._strategy.cluster_environment.main_port)  # as Lightning's launch sets it
        self._spawn_like = SpawnLike()  # travels with this launcher (its bound method is what the ranks run)
        return super().launch(function, *args, trainer=trainer, **kwargs)

    def _wrapping_function(self, process_idx, trainer, function, args, kwargs, return_queue, global_states=None):
        self._spawn_like.restore(keep_rank_env=False)  # Lightning sets them after this
        args, kwargs = _disable_module_memory_sharing((args, kwargs))
        return super()._wrapping_function(process_idx, trainer, function, args, kwargs, return_queue, global_states)


class ForkserverDDP(DDPStrategy):
    """``ddp_spawn`` for a ``lightning.Trainer`` on CPU, its ranks forked from the preloaded forkserver."""

    def __init__(self, **kwargs):
        super().__init__(start_method="forkserver", **kwargs)

    def _configure_launcher(self) -> None:
        self._launcher = _ForkserverLauncher(self, start_method="forkserver")
