"""`bench-wandb-sweep sweeps/<study>.yaml [overrides...]`: the study's grid as a W&B sweep spec, so many machines
can pull cells with `wandb agent` and the cells land in the same results file as `bench -m sweep=<study>`.

The grid is the one the Hydra multirun (and bench's preflight) expands: `bench.preflight.grid`. The spec is a W&B
grid sweep whose parameters are the swept Hydra keys and whose command runs one cell per agent run:
``bench -m sweep=<study> [overrides] <key>=<value> ...`` (W&B's ``${args_no_hyphens}`` macro writes Hydra's
``key=value``); the command line sets every swept key, so the multirun has exactly one cell. Each agent run's job dir
is ``.jobs/wandb-<run id>`` so concurrent agents on one shared results root never write the same Hydra files.

    bench-wandb-sweep sweeps/guidance.yaml out_dir=/shared/runs --out guidance.sweep.yaml [--create]
    wandb sweep guidance.sweep.yaml      # or --create; then, on every machine:  wandb agent <entity/project/id>
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import yaml

from bench import preflight
from bench.schema import ConfigError

# The per-run Hydra job dir (resolved by Hydra at job time; not a W&B macro: it does not start with "${").
JOB_SUBDIR = "hydra.sweep.subdir=.jobs/wandb-${oc.env:WANDB_RUN_ID,local}"


def study_name(path: str) -> str:
    """`sweeps/guidance.yaml` (or `guidance`) -> `guidance`, checked against the shipped sweep files."""
    name = Path(path).stem if path.endswith((".yaml", ".yml")) else path
    allowed = preflight._group_options("sweep")
    if name not in allowed or (path.endswith((".yaml", ".yml")) and not Path(path).is_file()):
        raise ConfigError("sweep", path, f"a sweep file in sweeps/: one of {', '.join(allowed)}")
    return name


def _value(text: str):
    """A Hydra override value as W&B should show it: int/float when it reads back to the same text, else the text.
    W&B formats it back with str() (``f"{key}={value}"``), so only values that survive that trip are typed."""
    for cast in (int, float):
        try:
            v = cast(text)
        except ValueError:
            continue
        if str(v) == text:
            return v
    return text


def sweep_spec(study: str, overrides: list[str] = (), project: str | None = None,
               entity: str | None = None) -> dict:
    """The W&B sweep spec (a dict; `yaml.safe_dump` it) of `bench -m sweep=<study> overrides...`."""
    argv = ["-m", f"sweep={study}", *overrides]
    g = preflight.grid(argv)
    if g is None:
        raise ConfigError("overrides", " ".join(overrides), "Hydra key=value overrides (no --flags)")
    base, sweeps = g
    if not sweeps:
        raise ConfigError("sweep", study, "a sweep file with hydra.sweeper.params (a grid to sweep)")
    params = {key: {"values": [_value(item.split("=", 1)[1]) for item in items]} for key, items in sweeps.items()}
    first = preflight.compose_cfg(base + [items[0] for items in sweeps.values()])
    metric = "fid" if first.data.name != "toy2d" else "swd"  # what the cell's run logs as its headline score
    spec = {
        "name": str(first.name),
        "description": f"bench -m sweep={study} " + " ".join(overrides),
        "program": "bench",
        "method": "grid",
        "metric": {"name": metric, "goal": "minimize"},
        "parameters": params,
        "command": ["${env}", "bench", "-m", *base, JOB_SUBDIR, "${args_no_hyphens}"],
    }
    project = project or str(first.tracker.project)
    entity = entity or first.tracker.entity
    spec["project"] = project
    if entity:
        spec["entity"] = str(entity)
    return spec


def spec_cells(spec: dict) -> list[list[str]]:
    """The override list of every cell an agent would run for `spec` (the grid product, in W&B's formatting)."""
    keys = list(spec["parameters"])
    base = [c for c in spec["command"][2:] if not c.startswith("${") and c not in ("-m", JOB_SUBDIR)]
    return [base + [f"{k}={v}" for k, v in zip(keys, combo)]
            for combo in itertools.product(*(spec["parameters"][k]["values"] for k in keys))]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench-wandb-sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_file", help="sweeps/<study>.yaml (or the study name)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides fixed for every cell (e.g. out_dir=/shared/runs)")
    p.add_argument("--out", help="write the spec here (YAML); default: stdout")
    p.add_argument("--create", action="store_true", help="also register it with wandb.sweep and print the agent line")
    p.add_argument("--project", help="W&B project (default: tracker.project)")
    p.add_argument("--entity", help="W&B entity (default: tracker.entity)")
    a = p.parse_args(argv)
    try:
        study = study_name(a.sweep_file)
        spec = sweep_spec(study, a.overrides, a.project, a.entity)
        n = preflight.check(["-m", f"sweep={study}", *a.overrides])  # every cell validates before anything is written
    except (ConfigError, preflight.CompositionError) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(2)
    text = yaml.safe_dump(spec, sort_keys=False)
    if a.out:
        Path(a.out).write_text(text)
        print(f"{a.out}: W&B grid sweep over {n} cells of {study}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if a.create:
        import wandb  # lazy: optional and slow to import; only --create needs it

        sweep_id = wandb.sweep(spec, project=spec["project"], entity=spec.get("entity"))
        where = "/".join(x for x in (spec.get("entity"), spec["project"], sweep_id) if x)
        print(f"wandb agent {where}")


if __name__ == "__main__":
    main()
