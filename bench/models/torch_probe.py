"""The probe of ``model=torch`` against mis-declaration: one cheap check on real training images before any work.

``PROBE_IMAGES`` training images x0 are noised at ``PROBE_SIGMAS`` (σ = s / α in the harness's [-1, 1] space, each at
the nearest timestep of ``schedule``) with seeded noise, through the adapter exactly as a sampler calls it; the
model's output is read back as an x0 estimate. The probe value ``x0_error`` is its mean squared error divided by
that of the best linear (per-pixel Wiener) denoiser of the same images, averaged over the levels: a model that
denoises beats it (< 1); a wrong time convention, data range or prediction type does not. An ε-model's output on
pure noise at the top of the schedule should also have std 1 (``eps_std``). A failing probe is refused with one line
naming the declaration that, changed alone, passes (when one does) and the measured value; ``model.probe=false``
bypasses the refusal on purpose (the value is still measured and recorded).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import torch

from bench.data import build_dataset
from bench.results import Columns
from bench.schedule import train_sigmas
from bench.schema import ConfigError
from bench.utils import path_fingerprint, to_plain

from .torch_module import OBJECTIVES, TIME_INPUTS, Declaration, adapter, build_net, target_source

PROBE_IMAGES = 64
PROBE_SIGMAS = (0.1, 0.2, 0.5, 1.0, 2.0)  # from little noise to SNR 1/4 on [-1, 1] images
PROBE_SEED = 0
# refused outside these; the measurements behind them are in docs/own_model.md (correct adapters: 0.70 conditional,
# 0.86 the same net unconditional; eps std 1.08 / 1.20; mis-declared: 1.01 .. 200)
MAX_X0_ERROR = 0.95
EPS_STD_RANGE = (0.75, 1.25)  # an ε-model's output std on pure noise
DATA_RANGES = ((-1.0, 1.0), (0.0, 1.0), (-0.5, 0.5))


@dataclass(frozen=True)
class TorchModelColumns(Columns):
    """What the row records about a ``model=torch`` adapter: the probe's verdict (``passed`` | ``failed``: sampled
    only because ``model.probe=false``, ``probe_bypassed``), its value (x0 error relative to the best linear
    denoiser; < 1 denoises) and, for an ε-model, the std of its output on pure noise, over ``probe_images`` training
    images."""

    probe: str
    probe_bypassed: bool
    probe_x0_error: float
    probe_images: int
    probe_eps_std: float | None = None


def measure(net_adapter, schedule_cfg, images: torch.Tensor, labels: torch.Tensor | None,
            objective: str) -> tuple[float, float | None]:
    """(x0 error relative to the per-pixel Wiener denoiser, eps std on pure noise or None) of an adapter."""
    sig = train_sigmas(schedule_cfg)
    g = torch.Generator().manual_seed(PROBE_SEED)
    var = images.double().var(0, unbiased=False)
    ratios = []
    with torch.no_grad():
        for target in PROBE_SIGMAS:
            t = int((sig.log() - torch.log(torch.tensor(target, dtype=torch.float64))).abs().argmin())
            s2 = float(sig[t]) ** 2
            a = (1 / (1 + s2)) ** 0.5
            s = (s2 / (1 + s2)) ** 0.5
            eps = torch.randn(images.shape, generator=g)
            x_t = a * images + s * eps
            out = net_adapter(x_t, torch.full((len(images),), float(t)), labels)
            if tuple(out.shape) != tuple(images.shape):
                raise ConfigError("model.target", "torch", "a module whose output has the input's shape",
                                  f"it returned {tuple(out.shape)} for input {tuple(images.shape)}")
            x0 = {"eps": (x_t - s * out) / a, "x0": out, "v": a * x_t - s * out}[objective]
            mse = (x0.double() - images.double()).pow(2).mean()
            wiener = (var * s2 / (var + s2)).mean()
            ratios.append(float(mse / wiener.clamp(min=1e-12)))
        eps_std = None
        if objective == "eps":
            x_T = torch.randn(images.shape, generator=g)
            eps_std = float(net_adapter(x_T, torch.full((len(images),), float(len(sig) - 1)), labels).std())
    value = sum(ratios) / len(ratios)
    return (value if value == value else float("inf")), eps_std  # NaN: as bad as it gets


def passes(x0_error: float, eps_std: float | None) -> bool:
    return x0_error <= MAX_X0_ERROR and (eps_std is None or EPS_STD_RANGE[0] <= eps_std <= EPS_STD_RANGE[1])


def _images(cfg, info) -> tuple[torch.Tensor, torch.Tensor | None]:
    ds = build_dataset(cfg.data, "train")
    n = min(PROBE_IMAGES, len(ds))
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(PROBE_SEED))[:n].tolist()
    items = [ds[i] for i in idx]
    x = torch.stack([x for x, _ in items]).float()
    y = torch.as_tensor([int(y) for _, y in items]) if info.num_classes else None
    return x, y


def _alternatives(m, decl: Declaration):
    """(config key, its value, another value, that declaration): each declaration changed alone."""
    for v in TIME_INPUTS:
        if v != decl.time_input:
            yield "model.time_input", decl.time_input, v, dataclasses.replace(decl, time_input=v, time_offset=0.0,
                                                                               time_scale=None, time_dtype="float")
    for r in DATA_RANGES:
        if r != decl.data_range:
            yield "model.data_range", list(decl.data_range), list(r), dataclasses.replace(decl, data_range=r)
    for o in OBJECTIVES:
        if o != decl.objective:
            yield "objective", decl.objective, o, dataclasses.replace(decl, objective=o)


def _describe(x0_error: float, eps_std: float | None) -> str:
    out = f"x0 error {x0_error:.3g} (a correct declaration measures < {MAX_X0_ERROR})"
    if eps_std is not None:
        out += f", eps std on pure noise {eps_std:.3g} (want {EPS_STD_RANGE[0]}..{EPS_STD_RANGE[1]})"
    return out


def diagnose(cfg, info, net, images, labels, x0_error: float, eps_std: float | None) -> ConfigError:
    """The one-line refusal: the single changed declaration that passes with the lowest x0 error, if any."""
    m = cfg.model
    decl = Declaration.of(m, cfg.objective.name)
    best = None
    for key, have, other, alt in _alternatives(m, decl):
        try:
            e, s = measure(adapter(m, cfg.schedule, alt.objective, info, alt, net), cfg.schedule, images, labels,
                           alt.objective)
        except (ConfigError, RuntimeError, ValueError):
            continue  # this alternative cannot even run: not the one
        if passes(e, s) and (best is None or e < best[3]):
            best = (key, have, other, e, s)
    measured = _describe(x0_error, eps_std)
    if best is None:
        return ConfigError("model.probe", True, "a declaration under which the model denoises its training images, "
                           "or model.probe=false to bypass it", f"the probe measured {measured}; no single other "
                           "time_input, data_range or objective passes: check model.weights, the training schedule "
                           "and model.input_scaling")
    key, have, other, e, _ = best
    return ConfigError(key, have, f"a declaration the model was trained with (likely {key}={other})",
                       f"the probe measured {measured}; with {key}={other} it measures {e:.3g}; "
                       f"model.probe=false bypasses this")


_RESULTS: dict[str, TorchModelColumns] = {}


def _memo_key(cfg, info) -> str:
    m = to_plain(cfg.model)
    files = {k: path_fingerprint(m[k]) for k in ("weights", "schedule_file") if m.get(k)}
    src = target_source(m["target"]) if m.get("target") else None
    files["target"] = path_fingerprint(src) if src is not None else None
    blob = {"model": m, "files": files, "objective": cfg.objective.name, "schedule": to_plain(cfg.schedule),
            "data": info.id}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def probe(cfg, info) -> TorchModelColumns:
    """Build the adapter (the factory, the weights: their errors are one line each), measure it on real training
    images, refuse a failing probe unless ``model.probe`` is false; the row's columns. Once per configuration and
    process (validation of every cell of a study, then the cell itself)."""
    key = _memo_key(cfg, info)
    if key not in _RESULTS:
        net = build_net(cfg.model).eval()
        images, labels = _images(cfg, info)
        objective = cfg.objective.name
        den = adapter(cfg.model, cfg.schedule, objective, info, net=net)
        try:
            x0_error, eps_std = measure(den, cfg.schedule, images, labels, objective)
        except ConfigError:
            raise
        except Exception as e:  # the user's forward on the declared call: whatever it raises is the one line
            text = (str(e).strip().splitlines() or [""])[0][:160]
            raise ConfigError("model.target", cfg.model.target, "a module that takes the declared call "
                              "(model.x_arg, model.t_arg, model.label_arg)",
                              f"its forward raised {type(e).__name__}: {text}") from None
        ok = passes(x0_error, eps_std)
        if not ok and cfg.model.probe:
            raise diagnose(cfg, info, net, images, labels, x0_error, eps_std)
        _RESULTS[key] = TorchModelColumns("passed" if ok else "failed", not cfg.model.probe, round(x0_error, 6),
                                          len(images), None if eps_std is None else round(eps_std, 6))
    return _RESULTS[key]
