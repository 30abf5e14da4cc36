"""The user's own ``nn.Module`` as a harness denoiser (``model=torch``): all adaptation to it lives here, in the spirit
of k-diffusion's ``external.py`` (``DiscreteEpsDDPMDenoiser``, ``DiscreteVDDPMDenoiser``) and EDM's preconditioning.

The harness calls every denoiser as ``forward(x, t, class_labels)``: x = x_t = α x0 + s ε with images in [-1, 1]
(α² + s² = 1), t in ``schedule``'s timestep units, class ``num_classes`` the null class, and reads the output in the
objective's parameterisation. :class:`TorchDenoiser` takes each call into the conventions the user declared:

- **data space** ``data_range = [lo, hi]``: x' = c x + d with c = (hi - lo) / 2, d = (hi + lo) / 2; the same noise ε
  then has σ' = c σ in the model's space (σ = s / α, the VE noise level of Karras et al. 2022);
- **input** ``vp``: α' (c x_t / α + d) with α' = 1 / sqrt(1 + σ'²) (DDPM); ``ve``: c x_t / α + d (EDM, k-diffusion);
- **time** ``index``: the index of σ' in the model's training table (log σ interpolated, k-diffusion's
  ``sigma_to_t``) + ``time_offset``; ``fraction``: that / ``time_scale`` (t / T); ``sigma``; ``log_sigma``;
  ``c_noise``: log(σ') / 4 (EDM, Karras et al. 2022 Table 1);
- **output** (``objective``): ε is the same noise in both spaces; x0 = (x0' - d) / c; v = α ε - s x0 recomposed.

With the defaults (data in [-1, 1], ``vp``, ``index``, the training schedule = ``schedule``) the adapter passes the
call through unchanged: a harness model exported as a state dict samples bit for bit as it does in the harness.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch import nn

from bench.schedule import abar_at, train_sigmas
from bench.schema import ConfigError
from bench.utils import path_fingerprint, to_plain

TIME_INPUTS = ("index", "fraction", "sigma", "log_sigma", "c_noise")
TIME_DTYPES = ("float", "long")
INPUT_SCALINGS = ("vp", "ve")
SCHEDULE_VALUES = ("alphas_cumprod", "betas")
OBJECTIVES = ("eps", "v", "x0")  # Gaussian diffusion paths; a flow model has no σ-table to adapt
TARGET = "package.module:factory, path/to/file.py:factory or a TorchScript file"
SIGMA_SLACK = 1.05  # the samplers' largest σ may exceed the model's trained one by this factor (rounding)


def _err(key: str, value, allowed: str, why: str = ""):
    raise ConfigError(key, value, allowed, why)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else type(e).__name__


def _names(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


# --------------------------------------------------------------------------------------------------- the target

def split_target(target: str) -> tuple[str, str | None]:
    """(module or file, factory name) of ``package.module:factory`` / ``path/to/file.py:factory``; (file, None) for
    a TorchScript file."""
    head, sep, tail = str(target).rpartition(":")
    if sep and head and tail.isidentifier():
        return head, tail
    return str(target), None


def _is_file(head: str) -> bool:
    return head.endswith(".py") or "/" in head or os.sep in head


def target_source(target: str) -> Path | None:
    """The file whose content the model key holds for ``model.target``: the factory's source file (a module found
    without running it), or the TorchScript file; None when it cannot be found (validation names the error)."""
    head, factory = split_target(target)
    if factory is None or _is_file(head):
        return Path(head).expanduser()
    try:
        spec = importlib.util.find_spec(head)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin and Path(spec.origin).is_file() else None


def target_fingerprint(target: str, _group=None) -> str | None:
    src = target_source(target)
    return path_fingerprint(src) if src is not None else None


_FILE_MODULES: dict[tuple, object] = {}


def _import_file(path: Path):
    """A ``.py`` file as a module (its directory on ``sys.path`` while it runs, for its own imports); imported once per
    content."""
    key = (str(path.resolve()), path_fingerprint(path))
    if key not in _FILE_MODULES:
        name = "bench_own_model_" + hashlib.sha256(key[0].encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look their module up here
        sys.path.insert(0, str(path.parent))
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            sys.path.remove(str(path.parent))
        _FILE_MODULES[key] = module
    return _FILE_MODULES[key]


def _factory(target: str, head: str, name: str):
    if _is_file(head):
        path = Path(head).expanduser()
        if not path.is_file():
            _err("model.target", target, TARGET, f"no such file: {path}")
    try:
        module = _import_file(path) if _is_file(head) else importlib.import_module(head)
    except Exception as e:  # anything its import raises
        _err("model.target", target, TARGET, f"importing {head} raised {_first_line(e)}")
    fn = getattr(module, name, None)
    if not callable(fn):
        _err("model.target", target, TARGET, f"{head} has no callable {name}")
    return fn


def build_net(m) -> nn.Module:
    """The user's module of model config ``m``: ``factory(**model.kwargs)`` or the TorchScript file, with
    ``model.weights`` loaded strictly (:func:`load_weights`)."""
    if not m.target:
        _err("model.target", m.target, TARGET, "model=torch")
    head, name = split_target(m.target)
    kwargs = to_plain(m.kwargs) or {}
    if name is None:
        path = Path(head).expanduser()
        if not path.is_file():
            _err("model.target", m.target, TARGET, f"no such file: {path}")
        if kwargs:
            _err("model.kwargs", kwargs, "null for a TorchScript target", "its module is built already")
        try:
            net = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            _err("model.target", m.target, TARGET, f"not a TorchScript file: {_first_line(e)}")
    else:
        fn = _factory(m.target, head, name)
        try:
            net = fn(**kwargs)
        except Exception as e:  # the user's code: whatever it raises is the one line
            _err("model.target", m.target, "a factory that builds the module",
                 f"{name}(**{kwargs}) raised {_first_line(e)}")
        if not isinstance(net, nn.Module):
            _err("model.target", m.target, "a factory that returns a torch.nn.Module",
                 f"{name}() returned {type(net).__name__}")
    if m.weights:
        load_weights(net, m)
    return net


# -------------------------------------------------------------------------------------------------- the weights

def read_state(m) -> dict:
    """``model.weights`` as a state dict: safetensors, or ``torch.load(weights_only=True)`` (no pickled code);
    ``model.weights_key`` picks an entry of a checkpoint dict; ``model.strip_prefix`` is removed from the names."""
    path = Path(str(m.weights)).expanduser()
    if not path.is_file():
        _err("model.weights", m.weights, "a safetensors or torch.save file", f"no such file: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        _err("model.weights", m.weights, "a safetensors file or a torch.save file of tensors (weights_only)",
             _first_line(e))
    entries = sorted(k for k, v in state.items() if isinstance(v, Mapping)) if isinstance(state, Mapping) else []
    if m.weights_key:
        if m.weights_key not in entries:
            _err("model.weights_key", m.weights_key, f"an entry of {m.weights} holding a state dict: "
                 f"{_names(entries) or 'it has none'}")
        state = state[m.weights_key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        _err("model.weights", m.weights, "a state dict (names -> tensors)",
             f"set model.weights_key to one of its entries: {_names(entries)}" if entries else
             f"it holds a {type(state).__name__}")
    p = str(m.strip_prefix or "")
    return {(k[len(p):] if p and k.startswith(p) else k): v for k, v in state.items()}


def load_weights(net: nn.Module, m) -> None:
    """Strict loading: every name of the module's state dict present with its shape, nothing else (one line naming
    the missing, unexpected and mis-shaped names, and the prefix to strip when that is all that differs)."""
    state, own = read_state(m), net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (module: {tuple(own[k].shape)})" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{what}: {_names(names)}" for what, names in
                 (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes)) if names]
        prefix = os.path.commonprefix(unexpected) if unexpected else ""
        if missing and prefix.endswith(".") and {k[len(prefix):] for k in unexpected} >= set(missing):
            parts.append(f"set model.strip_prefix={prefix}")
        _err("model.weights", m.weights, "the state dict of the module model.target builds", "; ".join(parts))
    net.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------------- the schedule

def _read_table(path_str: str) -> np.ndarray:
    path = Path(str(path_str)).expanduser()
    if not path.is_file():
        _err("model.schedule_file", path_str, "a .npy, .pt or .txt file of the training schedule",
             f"no such file: {path}")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix in (".pt", ".pth"):
            v = torch.load(path, map_location="cpu", weights_only=True)
            return v.double().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=np.float64)
        return np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ConfigError:
        raise
    except Exception as e:
        _err("model.schedule_file", path_str, "a .npy, .pt or .txt file of numbers", _first_line(e))


def table_alphas_cumprod(values, kind: str, key: str, value) -> torch.Tensor:
    """ᾱ (float64) of a training-schedule table of ``kind`` (alphas_cumprod | betas), of any length: 1-D, finite,
    ᾱ in (0, 1) and falling (its first entry may be 1, the clean image of a T + 1 table); betas in (0, 1) (the first
    may be 0)."""
    v = torch.as_tensor(np.asarray(values, dtype=np.float64))
    if v.dim() != 1 or len(v) < 2:
        _err(key, value, f"a 1-D table of at least 2 {kind}", f"its shape is {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        _err(key, value, f"finite {kind}", "it holds NaN or Inf")
    if kind == "betas":
        bad = ~((v > 0) & (v < 1))
        bad[0] = not (0 <= float(v[0]) < 1)
        if bad.any():
            i = int(bad.nonzero()[0])
            _err(key, value, "betas in (0, 1) (the first may be 0)", f"entry {i} is {float(v[i]):.6g}")
        v = torch.cumprod(1 - v, 0)
    else:
        bad = ~((v > 0) & (v < 1))
        bad[0] = not (0 < float(v[0]) <= 1)
        if bad.any():
            i = int(bad.nonzero()[0])
            _err(key, value, "alphas_cumprod in (0, 1) (the first may be 1)", f"entry {i} is {float(v[i]):.6g}")
    if not (v[1:] < v[:-1]).all():
        i = int((v[1:] >= v[:-1]).nonzero()[0]) + 1
        _err(key, value, f"{kind} of a schedule whose noise grows with the index (alphas_cumprod falling)",
             f"alphas_cumprod[{i}] = {float(v[i]):.6g} >= alphas_cumprod[{i - 1}] = {float(v[i - 1]):.6g}")
    return v


def model_alphas_cumprod(m, net: nn.Module | None = None) -> torch.Tensor | None:
    """The model's own training ᾱ table (``model.schedule_file`` or ``model.schedule_buffer`` of ``net``), None when
    it was trained on ``schedule`` itself."""
    if m.schedule_file and m.schedule_buffer:
        _err("model.schedule_buffer", m.schedule_buffer, "null with model.schedule_file", "one table or the other")
    if m.schedule_values not in SCHEDULE_VALUES:
        _err("model.schedule_values", m.schedule_values, " | ".join(SCHEDULE_VALUES))
    if m.schedule_file:
        return table_alphas_cumprod(_read_table(m.schedule_file), m.schedule_values, "model.schedule_file",
                                    m.schedule_file)
    if m.schedule_buffer and net is not None:
        buffers = dict(net.named_buffers())
        if m.schedule_buffer not in buffers:
            _err("model.schedule_buffer", m.schedule_buffer, f"a buffer of the module: {_names(sorted(buffers), 6)}")
        return table_alphas_cumprod(buffers[m.schedule_buffer].detach().cpu(), m.schedule_values,
                                    "model.schedule_buffer", m.schedule_buffer)
    return None


# ---------------------------------------------------------------------------------------------- the declaration

@dataclass(frozen=True)
class Declaration:
    """What the model expects, as far as the numbers go (the probe varies these to name a likely mistake)."""

    objective: str
    time_input: str = "index"
    time_offset: float = 0.0
    time_scale: float | None = None
    time_dtype: str = "float"
    data_range: tuple[float, float] = (-1.0, 1.0)
    input_scaling: str = "vp"

    @classmethod
    def of(cls, m, objective: str) -> Declaration:
        return cls(objective, str(m.time_input), float(m.time_offset),
                   None if m.time_scale is None else float(m.time_scale), str(m.time_dtype),
                   tuple(float(v) for v in m.data_range), str(m.input_scaling))


def check(cfg, info) -> None:
    """The declarations of ``model=torch``, each a one-line ConfigError, without building the module (that, the
    weights and the probe are :func:`bench.models.torch_probe.probe`'s, run last in validation)."""
    m = cfg.model
    if info.kind != "images":
        _err("model", "torch", f"image data (data {info.id} has shape {info.shape})")
    if not m.target:
        _err("model.target", m.target, TARGET, "model=torch")
    if cfg.objective.name not in OBJECTIVES:
        _err("objective", cfg.objective.name, f"{' | '.join(OBJECTIVES)} with model=torch",
             "the prediction type of a diffusion model; a flow model has no noise table to adapt")
    for key, allowed in (("time_input", TIME_INPUTS), ("time_dtype", TIME_DTYPES), ("input_scaling", INPUT_SCALINGS),
                         ("schedule_values", SCHEDULE_VALUES)):
        if m[key] not in allowed:
            _err(f"model.{key}", m[key], " | ".join(allowed))
    if m.time_dtype == "long" and m.time_input != "index":
        _err("model.time_dtype", "long", f"float with model.time_input={m.time_input}", "only an index is an integer")
    if m.time_offset and m.time_input not in ("index", "fraction"):
        _err("model.time_offset", m.time_offset, f"0 with model.time_input={m.time_input}", "it offsets an index")
    if m.time_scale is not None and m.time_input != "fraction":
        _err("model.time_scale", m.time_scale, f"null with model.time_input={m.time_input}", "it divides an index")
    r = list(m.data_range)
    if len(r) != 2 or not r[0] < r[1]:
        _err("model.data_range", r, "[low, high] with low < high, e.g. [-1, 1], [0, 1] or [-0.5, 0.5]")
    for key, have in (("channels", info.shape[0]), ("image_size", info.shape[-1])):
        if m[key] is not None and int(m[key]) != int(have):
            _err(f"model.{key}", m[key], f"null or {have} (data.{key} of {info.id})",
                 "the harness samples and scores images of the data's shape")
    places = {name: m[f"{name}_arg"] for name in ("x", "t", "label")}
    if places["x"] is None or places["t"] is None:
        _err("model.x_arg" if places["x"] is None else "model.t_arg", None, "a position (0, 1, ...) or a keyword")
    if places["label"] is not None and not info.num_classes:
        _err("model.label_arg", places["label"], "null (an unconditional model) for data without classes",
             f"data {info.id} has no labels to pass")
    given = [v for v in places.values() if v is not None]
    positions = sorted(v for v in given if isinstance(v, int))
    if len(set(map(str, given))) != len(given) or positions != list(range(len(positions))):
        _err("model.x_arg", places["x"], "distinct arguments, positions 0, 1, ... without gaps",
             f"x_arg={places['x']}, t_arg={places['t']}, label_arg={places['label']}")
    model_alphas_cumprod(m)  # the table file: shape, range, order


def _select(m, group: str):
    node = OmegaConf.select(m, f"..{group}") if OmegaConf.is_config(m) else None
    if node is None:
        _err("model", "torch", "a model config inside a whole bench config", f"the adapter reads {group}=")
    return node


def build(m, info) -> TorchDenoiser:
    """The family's builder (``MODELS["torch"]``): the adapter of ``cfg.model`` with the config's ``schedule`` and
    ``objective`` (read beside it)."""
    return adapter(m, _select(m, "schedule"), str(_select(m, "objective").name), info)


def adapter(m, schedule_cfg, objective: str, info, declaration: Declaration | None = None,
            net: nn.Module | None = None) -> TorchDenoiser:
    """:class:`TorchDenoiser` of model config ``m`` sampled on ``schedule_cfg``; ``declaration``/``net``: another
    declaration of the same module (the probe's alternatives)."""
    net = build_net(m) if net is None else net
    decl = declaration or Declaration.of(m, objective)
    conditional = m.label_arg is not None and info.num_classes > 0
    null = info.num_classes if m.null_label is None else int(m.null_label)
    places = {"x": m.x_arg, "t": m.t_arg, "labels": m.label_arg if conditional else None}
    den = TorchDenoiser(net, decl, train_sigmas(schedule_cfg), model_alphas_cumprod(m, net),
                        info.num_classes if conditional else 0, null, places)
    den.recipe = (to_plain(m), to_plain(schedule_cfg), objective, info, decl)
    return den


def _rebuild(recipe: tuple, state: dict) -> TorchDenoiser:
    """An adapter unpickled in another process (a sharded cell's rank): built again from its recipe (the user's class
    may live in a file only this module knows how to import), with the pickled weights (a student's, say)."""
    m, schedule, objective, info, decl = recipe
    den = adapter(OmegaConf.create(m), OmegaConf.create(schedule), objective, info, decl)
    den.load_state_dict(state)
    return den.eval()


# ---------------------------------------------------------------------------------------------------- the adapter

class TorchDenoiser(nn.Module):
    """The user's module ``net`` behind the harness's ``forward(x, t, class_labels=None)`` (module docstring).
    ``harness_sigmas``: σ of ``schedule`` at t = 0..T-1; ``model_abar``: the model's own ᾱ table (None: it was trained
    on ``schedule``); ``places``: where x, t and labels go in ``net``'s call (an int: position; a str: keyword)."""

    def __init__(self, net: nn.Module, decl: Declaration, harness_sigmas: torch.Tensor,
                 model_abar: torch.Tensor | None, num_classes: int, null_label: int, places: dict):
        super().__init__()
        self.net, self.decl, self.num_classes, self.null_label = net, decl, int(num_classes), int(null_label)
        self.places = {k: v for k, v in places.items() if v is not None}
        lo, hi = decl.data_range
        self.c, self.d = (hi - lo) / 2, (hi + lo) / 2
        harness_sigmas = harness_sigmas.double()
        table = model_abar if model_abar is not None else 1 / (1 + harness_sigmas**2)
        sigmas = ((1 - table) / table).clamp(min=0).sqrt()
        self.first_index = int((sigmas > 0).nonzero()[0])  # a T + 1 table's entry 0 is the clean image (σ = 0)
        self.time_scale = decl.time_scale or float(len(table) - 1 if float(table[0]) == 1 else len(table))
        self.register_buffer("harness_log_sigmas", harness_sigmas.log(), persistent=False)
        self.register_buffer("model_log_sigmas", sigmas[self.first_index:].log(), persistent=False)
        self.identity = (model_abar is None and (self.c, self.d) == (1.0, 0.0) and decl.input_scaling == "vp"
                         and decl.time_input == "index" and decl.time_offset == 0)
        top = self.c * float(harness_sigmas[-1])
        if top > SIGMA_SLACK * float(sigmas[-1]):
            _err("schedule.num_train_timesteps" if model_abar is not None else "model.data_range",
                 len(harness_sigmas) if model_abar is not None else list(decl.data_range),
                 "a sampling schedule within the noise levels the model was trained on",
                 f"the samplers would start at sigma {top:.4g} in the model's space, its training table ends at "
                 f"{float(sigmas[-1]):.4g}")

    def __reduce__(self):
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        return _rebuild, (self.recipe, state)

    def __deepcopy__(self, memo):  # the default copy of every attribute (pickling is :func:`_rebuild`'s)
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def sigma_to_index(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional index of ``sigma`` in the model's training table (log σ interpolated, clamped to it)."""
        ls = self.model_log_sigmas
        if len(ls) == 1:
            return torch.full_like(sigma, float(self.first_index))
        q = sigma.log().clamp(float(ls[0]), float(ls[-1]))
        hi = torch.searchsorted(ls, q.contiguous()).clamp(1, len(ls) - 1)
        lo = hi - 1
        return lo + (q - ls[lo]) / (ls[hi] - ls[lo]) + self.first_index

    def time_of(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model's time input at its noise level ``sigma`` (float64 (B,)), by ``time_input``."""
        kind = self.decl.time_input
        if kind == "sigma":
            return sigma
        if kind == "log_sigma":
            return sigma.log()
        if kind == "c_noise":
            return sigma.log() / 4
        k = self.sigma_to_index(sigma) + self.decl.time_offset
        return k / self.time_scale if kind == "fraction" else k

    def _call(self, x, t, labels):
        if self.decl.time_dtype == "long":
            t = t.round().long()
        values = {"x": x, "t": t, "labels": labels}
        positional = sorted((p, n) for n, p in self.places.items() if isinstance(p, int))
        kwargs = {p: values[n] for n, p in self.places.items() if isinstance(p, str)}
        return self.net(*[values[n] for _, n in positional], **kwargs)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        labels = None
        if self.num_classes:
            labels = (torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
                      if class_labels is None else class_labels.long())
            if self.null_label != self.num_classes:
                labels = torch.where(labels == self.num_classes, self.null_label, labels)
        if self.identity:
            return self._call(x, t.to(x.dtype), labels)
        abar = abar_at(self.harness_log_sigmas, t)  # float64 on the buffers' device
        a, s = abar.sqrt(), (1 - abar).sqrt()
        sigma_m = self.c * s / a
        a_m = (1 + sigma_m**2).rsqrt()

        def bc(v):
            return v.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))

        x_ve = bc(self.c / a) * x + self.d  # the model's x0' + σ' ε
        x_in = bc(a_m) * x_ve if self.decl.input_scaling == "vp" else x_ve
        out = self._call(x_in, self.time_of(sigma_m).to(x.dtype), labels)
        if self.decl.objective == "eps":
            return out
        if self.decl.objective == "x0":
            return (out - self.d) / self.c
        xt_m = bc(a_m) * x_ve  # v = α' ε - σ'α' x0' on the model's VP path
        x0 = (bc(a_m) * xt_m - bc(sigma_m * a_m) * out - self.d) / self.c
        eps = bc(sigma_m * a_m) * xt_m + bc(a_m) * out
        return bc(a) * eps - bc(s) * x0
