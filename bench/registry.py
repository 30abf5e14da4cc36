"""One registry per config group: ``conf/<group>/<name>.yaml`` ↔ one ``Entry`` (builder + check) in its package.

``bench.validate`` walks the registries; a new data set, model family, objective, schedule, sampler, metric, tracker
or distillation method is one entry in its package plus one YAML file (``tests/test_registries.py`` checks both
sides agree).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bench.schema import ConfigError


def _no_check(cfg, info) -> None:
    """Nothing to check beyond the generic ranges in bench.validate."""


@dataclass(frozen=True)
class Entry:
    """``build``: what the group's name stands for (a dataset class, a model builder, a diffusers scheduler builder,
    ...); ``check(cfg, info)``: raise a one-line ConfigError for a value or combination this entry cannot run."""

    build: Callable[..., Any] | None = None
    check: Callable[[Any, Any], None] = _no_check
    doc: str = ""


class Registry:
    """name → Entry for one config group; ``key`` is the config key holding the name (``sampler.name``)."""

    def __init__(self, group: str, key: str, entries: dict[str, Entry]):
        self.group, self.key, self.entries = group, key, dict(entries)

    def __getitem__(self, name: str) -> Entry:
        entry = self.entries.get(name)
        if entry is None:
            raise ConfigError(self.key, name, "one of " + ", ".join(self.entries))
        return entry

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> tuple:
        return tuple(self.entries)

    def name_in(self, cfg) -> str:
        """The name ``cfg`` selects for this group (``cfg.<key>``)."""
        node = cfg
        for part in self.key.split("."):
            node = node[part]
        return node
