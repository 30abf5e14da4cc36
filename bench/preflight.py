"""Pre-flight: compose and validate *every* cell a command would run, before Hydra writes or trains anything.

Hydra's multirun validates composition job by job, so a bad value in the fifth cell of a sweep would only show after
four cells ran. Here each combination of the sweep (command-line sweep overrides and `hydra.sweeper.params` from the
chosen experiment/sweep files) is composed with Hydra's compose API and passed to `bench.validate.validate`.
This is validation only; Hydra's launcher still runs the jobs.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Iterable

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bench import schema
from bench.schema import register
from bench.validate import validate

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
MAX_CELLS = 2000
_PASS_FLAGS = {"-m", "--multirun"}


class CompositionError(ValueError):
    """Hydra could not compose the config (unknown group option, misspelt key, wrong type): one line."""


def _group_options(group: str) -> list[str]:
    d = Path(CONF_DIR) / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


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
        node = getattr(schema, m.group(2), None)
        keys = ", ".join(f.name for f in dataclasses.fields(node)) if dataclasses.is_dataclass(node) else "?"
        where = o.group(1) if o else m.group(1)
        return f"{where}: no such key in {m.group(2)}; allowed keys: {keys}"
    first = text.split("Config search path")[0].split("full_key:")[0]
    msg = " ".join(first.split())
    if cause is not None and str(cause) and str(cause) not in msg:
        msg += ": " + " ".join(str(cause).split("full_key:")[0].split())
    return msg


def compose_cfg(overrides: list[str], return_hydra_config: bool = False):
    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("bench", overrides=overrides, return_hydra_config=return_hydra_config)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise CompositionError(f"{key}: {_one_line(e)}" if key else _one_line(e)) from None
    except Exception as e:  # hydra.errors.* (ConfigCompositionException, OverrideParseException, ...)
        raise CompositionError(_one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()


def _unparsable(parser, overrides: list[str]) -> str:
    """The first override the grammar rejects, to name it in the error."""
    for o in overrides:
        try:
            parser.parse_override(o)
        except Exception:
            return o
    return " ".join(overrides)


def expand(argv: Iterable[str]) -> list[list[str]] | None:
    """The override list of every cell `bench argv` would run; None when argv asks Hydra for something else."""
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
            sweeps[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
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
            sweeps[key] = ([f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
                           else [o.input_line])
    combos = list(itertools.islice(itertools.product(*sweeps.values()), MAX_CELLS + 1))
    return [base + list(c) for c in combos]


def check(argv: Iterable[str]) -> int:
    """Compose + validate every cell; raise ConfigError/CompositionError on the first bad one. Returns #cells."""
    cells = expand(argv)
    if cells is None:
        return 0
    for overrides in cells[:MAX_CELLS]:
        validate(compose_cfg(overrides))
    return len(cells)
