"""The adapter study's own table: one row per adapter (its kind and rank, or the base model itself) with what it
costs (trainable parameters, bytes stored, training steps and seconds) beside its scores on the classes it was
taught (new) and on the base model's own (old: forgetting). Read from the rows only."""
from __future__ import annotations

import json

import pandas as pd

from bench.metric_spec import spec

from .formatting import decimals, fmt_value, label
from .load import norm
from .plan import Plan
from .tables import Cell, Table

COST = ("adapter_trainable_params", "adapter_bytes", "adapter_train_steps", "adapter_train_seconds")


def _classes(v) -> tuple | None:
    v = norm(v)  # a list as its JSON text
    return None if v is None else tuple(int(c) for c in (json.loads(v) if isinstance(v, str) else v))


def _scored(r: pd.Series) -> tuple | None:
    """The classes a row was scored on: ``sampling.classes``, else the adapter's, else the data's."""
    for col in ("sampling.classes", "adapter_classes", "data.classes"):
        if col in r and _classes(r[col]) is not None:
            return _classes(r[col])
    return None


def adapter_table(ok: pd.DataFrame, plan: Plan, split: dict) -> Table | None:
    """Adapter × (cost, quality metrics on the new classes, on the old ones); the base model (adapter none) first."""
    if "adapter" not in ok:
        return None
    taught = {_classes(v) for v in ok["adapter_classes"]} - {None} if "adapter_classes" in ok else set()
    if len(taught) != 1:
        return None  # adapters taught different classes: which are "new" is ambiguous
    new = taught.pop()
    metrics = [m for m in plan.metrics if m in ok and spec(m).kind == "quality"]
    ok = ok.assign(_which=["new" if _scored(r) == new else "old" for _, r in ok.iterrows()],
                   _id=[(norm(r.get("adapter")) or "none", norm(r.get("adapter_rank")), norm(r.get("lora_scale")),
                         norm(r.get("adapter_key")) or norm(r.get("model_key"))) for _, r in ok.iterrows()])
    order = {"none": 0, "lora": 1, "full": 2}
    adapters = sorted(set(ok["_id"]), key=lambda t: (order.get(t[0], 3), t[0], t[1] or 0, -(t[2] or 0), t[3]))
    header = ["adapter", "rank", "lora scale", "trainable params", "adapter bytes", "train steps", "train s",
              "base model", *[f"{label(m)} {w}" for w in ("new", "old") for m in metrics]]
    d = {m: decimals(m, [v * spec(m).scale for v in ok[m].dropna()]) for m in metrics}
    body, recs = [], []
    for ident in adapters:
        kind, rank, scale, _ = ident
        g = ok[ok["_id"] == ident]
        first = g.iloc[0]
        cost = {c: norm(first.get(c)) for c in COST}
        base = norm(first.get("base_model_key")) or norm(first.get("model_key"))
        scores = {}
        for w in ("new", "old"):
            for m in metrics:
                vals = g[g["_which"] == w][m].dropna()
                scores[f"{m}_{w}"] = float(vals.mean()) if len(vals) else None
        body.append([Cell(kind), *[Cell(fmt_value(v) if v is not None else "—") for v in (rank, scale)],
                     *[Cell(fmt_value(cost[c]) if cost[c] is not None else "—") for c in COST[:3]],
                     Cell(f"{cost['adapter_train_seconds']:.1f}" if cost["adapter_train_seconds"] is not None
                          else "—"),
                     Cell(str(base)),
                     *[Cell(f"{scores[f'{m}_{w}'] * spec(m).scale:.{d[m]}f}" if scores[f"{m}_{w}"] is not None
                            else "—") for w in ("new", "old") for m in metrics]])
        recs.append({"adapter": kind, "adapter_rank": rank, "lora_scale": scale, **cost, "base_model_key": base,
                     **scores})
    notes = [f"new = scored on the classes the adapters were taught ({', '.join(map(str, new))}); old = on the "
             f"others, the base model's own (forgetting: how far an adapter moved them from the base row). "
             f"adapter none = the base model itself. Costs: trainable parameters and bytes of the stored adapter "
             f"weights, its training steps and seconds (the base model's training is not included)."]
    title = "Adapters: size, training cost and quality on the new and the old classes" + (
        " — " + ", ".join(f"{k}={fmt_value(v)}" for k, v in split.items()) if split else "")
    return Table("adapter", title, header, 2, body, notes, pd.DataFrame(recs), split)
