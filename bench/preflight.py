"""Pre-flight: compose and validate *every* cell a command would run, before Hydra writes or trains anything.

Hydra's multirun validates composition job by job, so a bad value in the fifth cell of a sweep would only show after
four cells ran. Here each combination of the sweep (command-line sweep overrides and `hydra.sweeper.params` from the
chosen experiment/sweep files) is composed with Hydra's compose API and passed to `bench.validate.validate`.
This is validation only; Hydra's launcher still runs the jobs. Hydra's basic sweeper would compose every cell once
more before launching it (``validate_batch_is_legal``); :class:`PreflightedSweeper` (``hydra/sweeper: preflighted``)
skips the cells checked here (hydra_plugins/bench_sweeper).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, IntervalSweep
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bench import schema
from bench.schema import check_declared_keys, register
from bench.validate import validate


def _conf_dir() -> str:
    """conf/ beside the package in a source checkout (editable install); bench/conf/ (package data) in a wheel."""
    here = Path(__file__).resolve().parent
    for d in (here.parent / "conf", here / "conf"):
        if (d / "bench.yaml").is_file():
            return str(d)
    raise FileNotFoundError(f"bench's Hydra configs are missing: neither {here.parent / 'conf'} nor {here / 'conf'} "
                            "holds bench.yaml (reinstall bench)")


CONF_DIR = _conf_dir()
# conf/hydra/launcher/submitit_{slurm,local}.yaml shadow the plugin's structured configs of the same name on purpose:
# Hydra then validates our values against the plugin's schema (a misspelt launcher key fails before any work).
warnings.filterwarnings("ignore", message=r"(?s).*validated against ConfigStore schema with the same name",
                        category=UserWarning)
MAX_CELLS = 2000
_CHECKED: set[frozenset] = set()  # the cells check() composed and validated in this process (see _cell_id)
_PASS_FLAGS = {"-m", "--multirun"}


class CompositionError(ValueError):
    """Hydra could not compose the config (unknown group option, misspelt key, wrong type): one line."""


def _group_options(group: str) -> list[str]:
    d = Path(CONF_DIR) / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _help_groups() -> str:
    """The config groups and their options for `bench --help` (without the `<group>_schema` ConfigStore nodes)."""
    root = Path(CONF_DIR)
    groups = sorted(p.relative_to(root).as_posix() for p in [*root.iterdir(), *root.glob("hydra/*")]
                    if p.is_dir() and p.name != "hydra")
    return "\n".join(f"{g}: {', '.join(_group_options(g))}" for g in groups)


OmegaConf.register_new_resolver("bench_groups", _help_groups, replace=True)


def _one_line(e: BaseException) -> str:
    """Hydra/OmegaConf errors span lines (search paths, object types); keep what names the key and the value."""
    text = str(e)
    m = re.search(r"Could not find '([\w/]+)/([^']+)'", text)
    if m:
        group, value = m.groups()
        allowed = _group_options(group)
        if allowed:
            return f"{group}={value} is not allowed: one of {', '.join(allowed)} (config group '{group}')"
    cause = e.__cause__ or e.__context__
    m = re.search(r"Key '(\w+)' not in '(\w+)'", text + " " + str(cause or ""))
    o = re.search(r"override '([\w.]+)'", text)
    if m:
        node = getattr(cause, "object_type", None)  # the failing node's dataclass (ours, or a plugin's)
        if not dataclasses.is_dataclass(node):
            node = getattr(schema, m.group(2), None)
        keys = ", ".join(f.name for f in dataclasses.fields(node)) if dataclasses.is_dataclass(node) else "?"
        where = o.group(1) if o else m.group(1)
        family = next((f" (model={name})" for name, cls in schema.MODEL_SCHEMAS.items() if cls is node), "")
        return f"{where}: no such key in {m.group(2)}{family}; allowed keys: {keys}"
    first = text.split("Config search path")[0].split("full_key:")[0]
    msg = " ".join(first.split())
    if cause is not None and str(cause) and str(cause) not in msg:
        msg += ": " + " ".join(str(cause).split("full_key:")[0].split())
    return msg


def _composition_error(e: Exception) -> CompositionError:
    if isinstance(e, OmegaConfBaseException):
        key = getattr(e, "full_key", None)
        return CompositionError(f"{key}: {_one_line(e)}" if key else _one_line(e))
    return CompositionError(_one_line(e))  # hydra.errors.* (ConfigCompositionException, OverrideParseException, ...)


def compose_cfg(overrides: list[str], return_hydra_config: bool = False):
    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("bench", overrides=overrides, return_hydra_config=return_hydra_config)
    except Exception as e:
        raise _composition_error(e) from None
    finally:
        GlobalHydra.instance().clear()


def _config_groups() -> set[str]:
    root = Path(CONF_DIR)
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()}


def _is_value_override(o: str, groups: set[str]) -> bool:
    """A plain ``key=value`` on a key that is no config group: Hydra applies it to the config composed from the
    defaults list (``config_overrides``), after every group choice, so cells that differ only in such overrides
    compose the same defaults."""
    if "=" not in o or o[:1] in "+~" or o.startswith("hydra"):
        return False
    key = o.split("=", 1)[0]
    return "@" not in key and key not in groups


def compose_cells(cells: list[list[str]]):
    """Yield each cell's composed config (as :func:`compose_cfg` gives it) and its overrides. Cells share one
    composition per set of group choices; each copy then gets the cell's value overrides the way Hydra's own
    loader applies them (``ConfigLoaderImpl._apply_overrides_to_config``), so a 30-cell sampler x steps grid
    composes 6 times instead of 30. Errors read as :func:`compose_cfg`'s."""
    groups, parser, bases = _config_groups(), OverridesParser.create(), {}
    for overrides in cells:
        fixed = tuple(o for o in overrides if not _is_value_override(o, groups))
        values = [o for o in overrides if _is_value_override(o, groups)]
        if fixed not in bases:
            bases[fixed] = compose_cfg(list(fixed))
        cfg = copy.deepcopy(bases[fixed])
        try:
            ConfigLoaderImpl._apply_overrides_to_config(parser.parse_overrides(values), cfg)
        except Exception as e:
            raise _composition_error(e) from None
        yield cfg, overrides


def _unparsable(parser, overrides: list[str]) -> str:
    """The first override the grammar rejects, to name it in the error."""
    for o in overrides:
        try:
            parser.parse_override(o)
        except Exception:
            return o
    return " ".join(overrides)


def _sweep_values(o) -> list[str]:
    """The values of one sweep override, as Hydra's BasicSweeper would run them: lists, choice() and range()
    enumerate themselves; glob() filters the options of the config group it names (Hydra needs its ConfigLoader
    for that, which the preflight does not run); interval() has no grid (it is for optimising sweepers)."""
    key, value = o.get_key_element(), o.value()
    if isinstance(value, Glob):
        options = _group_options(key)
        if not options:
            groups = ", ".join(sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()))
            raise CompositionError(f"{o.input_line}: glob() selects options of a config group; '{key}' is not one "
                                   f"(groups: {groups})")
        names = value.filter(options)
        if not names:
            raise CompositionError(f"{o.input_line}: matches no option of '{key}' (options: {', '.join(options)})")
        return names
    if isinstance(value, IntervalSweep):
        raise CompositionError(f"{o.input_line}: interval() has no grid to run (it is for optimising sweepers); "
                               "use a list a,b,c or range(start,stop,step)")
    return list(o.sweep_string_iterator())


def expand(argv: Iterable[str]) -> list[list[str]] | None:
    """The override list of every cell `bench argv` would run; None when argv asks Hydra for something else."""
    g = grid(argv)
    if g is None:
        return None
    base, sweeps = g
    combos = list(itertools.islice(itertools.product(*sweeps.values()), MAX_CELLS + 1))
    return [base + list(c) for c in combos]


def grid(argv: Iterable[str]) -> tuple[list[str], dict[str, list[str]]] | None:
    """(fixed overrides, {swept key: its `key=value` overrides}) of `bench argv`: the grid Hydra's BasicSweeper
    expands (the command line's sweeps, then `hydra.sweeper.params` keys the command line does not set).
    None when argv asks Hydra for something else."""
    argv = list(argv)
    if any(a.startswith("-") and a not in _PASS_FLAGS for a in argv):
        return None  # --help, --cfg, --config-name, ...: leave to Hydra
    multirun = any(a in _PASS_FLAGS for a in argv)
    overrides = [a for a in argv if a not in _PASS_FLAGS]
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except Exception as e:
        raise CompositionError(f"{_unparsable(parser, overrides)}: {_one_line(e)}") from None
    base, sweeps = [], {}
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            sweeps[key] = [f"{key}={v}" for v in _sweep_values(o)]
        else:
            base.append(o.input_line)
    first = [vals[0] for vals in sweeps.values()]
    hcfg = compose_cfg(base + first, return_hydra_config=True)
    if multirun or sweeps or str(hcfg.hydra.mode).endswith("MULTIRUN"):
        params = hcfg.hydra.sweeper.params or {}
        if not isinstance(params, dict):
            params = OmegaConf.to_container(params, resolve=False)
        cli_keys = {o.get_key_element() for o in parsed}
        for key, value in params.items():
            if key in cli_keys:
                continue  # the command line wins, as in Hydra's BasicSweeper
            o = parser.parse_override(f"{key}={value}")
            sweeps[key] = ([f"{key}={v}" for v in _sweep_values(o)] if o.is_sweep_override()
                           else [o.input_line])
    return base, sweeps


# Overrides that say where or how a run goes, not what it computes: they keep the default job a grid.
WHERE_KEYS = ("out_dir", "cache_dir", "tracker", "trainer", "device", "name", "fail_fast")


def one_cell_argv(argv: Iterable[str]) -> list[str]:
    """A plain `bench KEY=VALUE ...` (no -m, no experiment/sweep chosen, no sweep syntax) runs that one cell, not
    the default experiment's grid; bare `bench` is still the default job. Returns argv, with hydra.mode=RUN added
    when it is a plain run."""
    argv = list(argv)
    if not argv or any(a.startswith("-") for a in argv):
        return argv
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(argv)
    except Exception:
        return argv  # expand() names the bad override
    keys = [o.get_key_element().lstrip("+~") for o in parsed]
    if any(o.is_sweep_override() for o in parsed) or any(k in ("experiment", "sweep") or k.startswith("hydra")
                                                         for k in keys):
        return argv
    if all(k.split(".")[0] in WHERE_KEYS for k in keys):
        return argv  # `bench out_dir=... tracker=none` is still the default job, elsewhere
    return argv + ["hydra.mode=RUN"]


def check(argv: Iterable[str]) -> int:
    """Compose + validate every cell; raise ConfigError/CompositionError on the first bad one. Returns #cells."""
    cells = expand(argv)
    if cells is None:
        return 0
    parser = OverridesParser.create()
    for cfg, overrides in compose_cells(cells[:MAX_CELLS]):
        check_declared_keys(cfg)
        validate(cfg)
        _CHECKED.add(_cell_id(parser, overrides))
    return len(cells)


def _cell_id(parser, overrides: Iterable[str]) -> frozenset:
    """A cell's overrides as a set of (key, value) pairs: the preflight's ``input_line`` and the sweeper's
    ``key=value`` spellings of one override compare equal."""
    return frozenset((o.get_key_element(), o.get_value_element_as_str())
                     for o in parser.parse_overrides(list(overrides)))


def unchecked(batch) -> list:
    """The cells of a sweeper's batch that :func:`check` has not composed and validated in this process."""
    parser = OverridesParser.create()
    return [overrides for overrides in batch if _cell_id(parser, overrides) not in _CHECKED]
