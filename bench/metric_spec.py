"""What each measured column of a results row means: its label, which direction is better, how it is shown, what
must be equal for two values to be comparable. The report, the tracker and the console summary all read this table;
a new metric is one entry here (and its computation in bench.metrics)."""
from __future__ import annotations

from dataclasses import dataclass

# Every choice that moves a score must be equal down a table column, else the column mixes incomparable numbers
# (columns as written by bench.metrics.scorer; absent ones are skipped).
_IMAGE = ("feature_net", "feature_net_hash", "resize", "quantize", "ref_id", "ref_hash", "n_ref", "num_samples",
          "repeats")
_TOY = ("n_ref", "num_samples")  # toy2d ref_id carries the seed (fresh true samples per seed): not a setting
_MACHINE = ("hardware", "device")  # timings and memory are comparable on one machine only
_REAL = ("real_split", "num_real_images")  # a task's held-out real images: which split, how many
_DREAMBOOTH = ("dreambooth_net_hash", "dreambooth_num_eval", "instance")  # DreamBooth's scores: one CLIP, N, subject


@dataclass(frozen=True)
class Metric:
    label: str  # as shown in tables and plots
    kind: str  # quality (a score of the samples) | cost (of sampling one cell) | model (a size) | training (its time)
    higher_is_better: bool = False
    decimals: int | None = None  # fixed decimals in tables; None: chosen per column from its values
    scale: float = 1.0  # display scale (CSV and rows keep raw units): s -> ms, KID x 10^3
    settings: tuple[str, ...] = ()  # row columns that must be equal for two values to be comparable
    deterministic: bool = True  # two runs of one cell give the same value (to machine rounding); timings do not
    default: bool = False  # tabulated when the report is not told which metrics
    console: bool = False  # a column of the console summary at the end of a run
    role: str = ""  # quality metrics: distance (to the reference set) | alignment (with the condition) | score |
    # faithfulness (to a real input image)


# In the order tables, plots and the console list them.
METRICS: dict[str, Metric] = {
    "fid": Metric("FID", "quality", decimals=2, settings=_IMAGE + ("fid_n",), default=True, console=True,
                  role="distance"),
    # KID x 10^3 as in the GAN/diffusion literature
    "kid": Metric("KID ×10³", "quality", decimals=2, scale=1000.0, settings=_IMAGE + ("kid_subset_size",),
                  default=True, console=True, role="distance"),
    "is": Metric("IS", "quality", higher_is_better=True, decimals=2, settings=_IMAGE + ("is_splits",), default=True,
                 console=True, role="score"),
    "clip_score": Metric("CLIP score", "quality", higher_is_better=True, decimals=2,
                         settings=("clip_net", "clip_net_hash", "feature_net_hash", "resize", "num_samples"),
                         default=True, console=True, role="alignment"),
    # the scores beyond FID (metric.prdc, cmmd, fd_inf, sfid, fd_dinov2), each with the settings its row records
    **{m: Metric(m.capitalize(), "quality", higher_is_better=True, decimals=3,
                 settings=_IMAGE + (k, "prdc_n_gen", "prdc_n_ref"), default=True, role="score")
       for m, k in (("precision", "pr_k"), ("recall", "pr_k"), ("density", "dc_k"), ("coverage", "dc_k"))},
    "cmmd": Metric("CMMD", "quality", decimals=3, settings=("cmmd_net", "cmmd_net_hash", "cmmd_sigma", "cmmd_resize",
                                                           "cmmd_ref_id", "cmmd_n_ref", "cmmd_n_gen", "quantize",
                                                           "num_samples", "repeats"), default=True, role="distance"),
    "fd_inf": Metric("FD∞", "quality", decimals=2, settings=_IMAGE + ("fd_inf_points", "fd_inf_n_min", "fd_inf_n_max",
                                                                      "fd_inf_seed"), default=True, role="distance"),
    **{m: Metric(lab, "quality", decimals=2, settings=(f"{m}_net", f"{m}_net_hash", f"{m}_resize", f"{m}_ref_id",
                                                       f"{m}_n_ref", f"{m}_n_gen", "quantize", "num_samples",
                                                       "repeats"), default=True, role="distance")
       for m, lab in (("sfid", "sFID"), ("fd_dinov2", "FD-DINOv2"))},
    "swd": Metric("SWD", "quality", settings=_TOY + ("swd_projections",), default=True, console=True,
                  role="distance"),
    "mmd": Metric("MMD", "quality", settings=_TOY + ("mmd_bandwidth_rule",), default=True, console=True,
                  role="distance"),
    # an edit against its real input (task=edit): faithfulness, and success at reaching the target condition
    "edit_l2": Metric("L2 to input", "quality", decimals=3, settings=("quantize", "num_samples"), default=True,
                      console=True, role="faithfulness"),
    "edit_psnr": Metric("PSNR to input (dB)", "quality", higher_is_better=True, decimals=2,
                        settings=("quantize", "num_samples"), default=True, role="faithfulness"),
    "edit_ssim": Metric("SSIM to input", "quality", higher_is_better=True, decimals=3,
                        settings=("quantize", "num_samples", "edit_ssim_kernel"), default=True, role="faithfulness"),
    "edit_accuracy": Metric("edit success", "quality", higher_is_better=True, decimals=3,
                            settings=("feature_net", "feature_net_hash", "resize", "num_samples"), default=True,
                            console=True, role="alignment"),
    "clip_direction": Metric("CLIP directional sim.", "quality", higher_is_better=True, decimals=3,
                             settings=("clip_net", "clip_net_hash", "feature_net_hash", "num_samples"), default=True,
                             role="alignment"),
    # control fidelity: the control mask against the mask re-extracted from each sample (bench.data.masks)
    "control_iou": Metric("control IoU", "quality", higher_is_better=True, decimals=3, settings=("num_samples",),
                          default=True, console=True, role="alignment"),
    "control_f1": Metric("control F1", "quality", higher_is_better=True, decimals=3, settings=("num_samples",),
                         role="alignment"),
    # DreamBooth (Ruiz et al. 2023), bench.adapt.dreambooth: subject and prompt fidelity, prior preservation (lower:
    # the class prompt kept its own images), diversity, and drift (FID of class-prompt samples vs the base model's)
    "clip_i": Metric("CLIP-I", "quality", higher_is_better=True, decimals=3, settings=_DREAMBOOTH, role="alignment"),
    "clip_t": Metric("CLIP-T", "quality", higher_is_better=True, decimals=3, settings=_DREAMBOOTH, role="alignment"),
    "pres": Metric("PRES", "quality", decimals=3, settings=_DREAMBOOTH, role="distance"),
    "div": Metric("DIV", "quality", higher_is_better=True, decimals=3, settings=_DREAMBOOTH, role="score"),
    "drift": Metric("drift (FID vs base)", "quality", decimals=2, settings=_DREAMBOOTH, role="distance"),
    "nfe": Metric("NFE", "cost", decimals=0, console=True),  # a count of model calls: the same on any machine
    "nfe_classifier": Metric("classifier NFE", "cost", decimals=0),
    "latency_p50": Metric("latency p50 (ms/img)", "cost", scale=1000.0, settings=_MACHINE, deterministic=False,
                          default=True, console=True),
    "latency_p95": Metric("latency p95 (ms/img)", "cost", scale=1000.0, settings=_MACHINE, deterministic=False),
    "images_per_s": Metric("images/s", "cost", higher_is_better=True, decimals=1, settings=_MACHINE,
                           deterministic=False, console=True),
    "peak_mem_mb": Metric("peak memory (MB)", "cost", decimals=0, settings=_MACHINE, deterministic=False),
    "wall_s": Metric("wall (s)", "cost", settings=_MACHINE, deterministic=False),
    # task=invert: reconstructions of held-out real images (bench.tasks.invert), per image then averaged
    "recon_psnr": Metric("recon PSNR (dB)", "quality", higher_is_better=True, decimals=2, settings=_REAL),
    "recon_ssim": Metric("recon SSIM", "quality", higher_is_better=True, decimals=4, settings=_REAL + ("ssim_kernel",)),
    "recon_mse": Metric("recon MSE", "quality", decimals=5, settings=_REAL),
    "recon_feature_dist": Metric("recon feature distance", "quality", decimals=3,
                                 settings=_REAL + ("feature_net", "feature_net_hash")),
    "recon_fid": Metric("recon FID", "quality", decimals=2, settings=_IMAGE + _REAL, role="distance"),
    "real_fid": Metric("real-image FID (floor)", "quality", decimals=2, settings=_IMAGE + _REAL, role="distance"),
    "nfe_inversion": Metric("inversion NFE", "cost", decimals=0),
    "nfe_reconstruction": Metric("reconstruction NFE", "cost", decimals=0),
    "nfe_null_text": Metric("null-text NFE (+backward)", "cost", decimals=0),
    "null_text_s": Metric("null-text optimisation (s)", "cost", settings=_MACHINE, deterministic=False),
    "num_params": Metric("parameters", "model", decimals=0),
    "classifier_num_params": Metric("classifier parameters", "model", decimals=0),
    "train_seconds": Metric("train time (s)", "training", settings=_MACHINE, deterministic=False),
    "distill_seconds": Metric("distill time (s)", "training", settings=_MACHINE, deterministic=False),
}

# Columns that carry a metric's uncertainty: <metric>_std, ... (bench.metrics.scorer).
ERROR_SUFFIXES = ("_std", "_se", "_ci95", "_ci_low", "_ci_high")


def names(**want) -> tuple[str, ...]:
    """Metric names (in table order) whose spec has every given field value, e.g. ``names(kind="quality")``."""
    return tuple(n for n, m in METRICS.items() if all(getattr(m, k) == v for k, v in want.items()))


def is_measured(column: str) -> bool:
    """A row column that measures the cell (a metric other than a model's size, or its error), not a setting."""
    base = next((column[: -len(s)] for s in ERROR_SUFFIXES if column.endswith(s)), column)
    return base in METRICS and METRICS[base].kind != "model"


def spec(column: str) -> Metric:
    """The spec of a metric; any other numeric row column a user tabulates gets a plain one (its name, lower is
    better, decimals from its values)."""
    return METRICS.get(column) or Metric(column, "other")
