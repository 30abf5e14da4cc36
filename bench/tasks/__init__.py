"""Tasks: what a cell does with its model (``conf/task/<name>.yaml`` ↔ one entry of :data:`TASKS`).

- ``generate``: sample from noise and score the samples (the cell's own path, bench.cell);
- ``invert``: DDIM-invert held-out real images and reconstruct them (:mod:`bench.tasks.invert`);
- ``edit``: SDEdit held-out real images towards a target condition (:mod:`bench.tasks.edit`).

A task on real images is one entry whose ``build(cfg, info, subject, call, work_dir)`` returns a
:class:`~bench.tasks.common.TaskResult` (scores, cost, row columns); the cell writes its row through the same results,
resume and tracking path as a generated cell's. Its images come from :func:`bench.tasks.common.held_out`.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.registry import Entry, Registry

from . import edit, invert
from .common import RealImages, TaskResult, check_real_images, condition_of, held_out, task_call, task_columns


def _check_generate(cfg, info) -> None:
    """Sampling from noise: every other group's checks apply; the task's own settings have no effect (normalised)."""


@dataclass(frozen=True)
class Task(Entry):
    """A task; ``build`` None: the cell's own sampling path (generate); ``real_images``: it starts from held-out real
    images (:func:`check_real_images` applies, ``task.num_images`` is its N)."""

    real_images: bool = False


def _real(check):
    def both(cfg, info) -> None:
        check_real_images(cfg, info)
        check(cfg, info)

    return both


TASKS = Registry("task", "task.name", {
    "generate": Task(None, _check_generate, doc="sample from noise and score the samples"),
    "invert": Task(invert.run, _real(invert.check), real_images=True,
                   doc="DDIM inversion of held-out images and back: reconstruction scores"),
    "edit": Task(edit.run, _real(edit.check), real_images=True,
                 doc="SDEdit of held-out images towards a target: realism, faithfulness, edit success"),
})

__all__ = ["TASKS", "Task", "TaskResult", "RealImages", "held_out", "condition_of", "task_call", "task_columns",
           "check_real_images"]
