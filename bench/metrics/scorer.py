"""Scores of one sweep cell, streamed: ``Scorer(cfg, info, cell_dir).update(batch)`` per batch, ``.compute()``.

Images: quantised to uint8 (as a saved PNG), one pass of the feature network per batch gives features (folded
into float64 running statistics) and logits; FID (Heusel et al. 2017), KID (Bińkowski et al. 2018), IS (Salimans
et al. 2016) and, for captioned data, CLIPScore (Hessel et al. 2021) against cached reference statistics
(``refstats``). Points (toy2d): sliced W1 and RBF MMD² against fresh samples of the true distribution.

Which scores: ``metric.name`` auto picks by data set — toy2d -> swd/mmd; digits -> digits-CNN FID/KID/IS
("digits-FID"); shapes -> FID/KID/IS on the offline CLIP's image embeddings (IS from its zero-shot logits over the
48 captions) + CLIP score; folder -> Inception-v3. ``metric.name=inception`` forces Inception-v3.
Uncertainty: ``metric.repeats`` = r > 1: the runner samples r · num_samples images with disjoint per-image seeds;
image i is in block i // num_samples, and the row holds the mean and std of r FIDs, each on N = num_samples images
(``fid_n``; KID and IS use all r · N);
``metric.bootstrap`` = B > 0 resamples the generated features B times: ``fid_std`` and a 95 % percentile interval.
More scores, each off by default and an entry of ``SCORES`` switched on by ``metric.<name>``: ``prdc`` (precision /
recall, density / coverage), ``cmmd``, ``fd_inf`` (FID at N = infinity), ``sfid``, ``fd_dinov2``. A score in a
feature space of its own (CMMD's CLIP where the cell's network is not that CLIP, sFID's Inception layer, DINOv2)
gets its own forward pass per batch and reference statistics from the same registry; every row holds each
score's settings (k, sigma, sizes, network and hash, N) beside it. With seed blocks each is computed per block, as
FID is: the row holds the mean and the std over blocks.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from bench.data import sample_true
from bench.data.masks import extract_masks, iou_f1
from bench.evaluators import load_feature_net, resolve_feature_net
from bench.evaluators.clip import cmmd_weights_message, load_clip, load_cmmd_clip
from bench.evaluators.dinov2 import ARCHS as DINOV2_ARCHS, MIN_SIZE as DINOV2_MIN_SIZE, load_dinov2
from bench.evaluators.inception import ENV_VAR, OFFICIAL_FILE, load_inception_spatial, weights_file
from bench.images import QUANTIZE, quantize_uint8
from bench.metrics import distances, toy
from bench.metrics.cmmd import SCALE as CMMD_SCALE, cmmd
from bench.metrics.fd_inf import fd_infinity
from bench.metrics.prdc import prdc
from bench.metrics.refstats import RefStatsError, get_reference
from bench.metrics.stats import FeatureStats, save_npz_atomic
from bench.registry import Entry, Registry
from bench.schema import ConfigError

IS_SPLIT_SIZE = 5000  # images per Inception Score split at least (Salimans et al. 2016: 50k in 10 splits)
TRUE_SAMPLE_SEED = 7_000_000  # + metric.seed: toy2d reference points never share a seed with train/test points


def _check_files(cfg, info) -> None:
    """Settings and local files the scores need, checked before training rather than after it (their contents are
    verified when loaded: Inception's sha256, the reference statistics' arrays)."""
    if info.kind != "images":
        _check_no_scores(cfg, f"data={cfg.data.name} is points (scored by swd/mmd)")
        return
    for name, score in SCORES.items():
        if cfg.metric[name]:
            score.check(cfg, info)
    if resolve_feature_net(cfg) == "inception":
        _check_inception_weights(cfg, info)
    ref = cfg.metric.reference_stats
    if ref and not Path(ref).expanduser().is_file():
        raise ConfigError("metric.reference_stats", ref, "a local .npz with mu/sigma or an ADM arr_0 batch",
                          "file not found")


def _check_no_scores(cfg, why: str) -> None:
    on = [name for name in SCORES if cfg.metric[name]]
    if on:
        raise ConfigError(f"metric.{on[0]}", True, "false here", why)


def _check_inception_weights(cfg, info) -> None:
    given, path = weights_file(cfg)
    if path is None:
        raise ConfigError("metric.inception_weights", given, f"a local Inception-v3 weights file ({OFFICIAL_FILE}"
                          f", never downloaded), or set ${ENV_VAR}", "file not found" if given else "not set")


def _score_in_own_space(key: str, value: Callable):
    """A score that is a function of (generated features, reference statistics) in its own network's space:
    the row holds the value and that network's provenance under ``key``_*."""
    def compute(sc: Scorer, gen: np.ndarray, ref) -> dict:
        net = sc.score_nets[key]
        return {key: value(gen, ref), f"{key}_net": net.name, f"{key}_net_hash": net.weights_hash,
                f"{key}_resize": net.resize, f"{key}_dim": int(gen.shape[1]), f"{key}_ref_id": ref.meta["ref_id"],
                f"{key}_n_ref": int(ref.n), f"{key}_n_gen": len(gen),
                **({f"{key}_loader": net.meta["loader"]} if "loader" in net.meta else {})}
    return compute


def _frechet(gen: np.ndarray, ref) -> float:
    s = FeatureStats.from_features(gen, keep_features=False)
    return distances.frechet_distance(s.mu, s.sigma, ref.mu, ref.sigma)


def _check_fd_dinov2(cfg, info) -> None:
    m, (_, h, w) = cfg.metric, info.shape
    if m.dinov2_model not in DINOV2_ARCHS:
        raise ConfigError("metric.dinov2_model", m.dinov2_model, " | ".join(DINOV2_ARCHS))
    if min(h, w) < DINOV2_MIN_SIZE and not m.dinov2_small_images:
        raise ConfigError("metric.fd_dinov2", True, f"images of at least {DINOV2_MIN_SIZE}px for DINOv2's 224 input, "
                          "or metric.dinov2_small_images=true to score them anyway",
                          f"data={cfg.data.name} images are {h}x{w}")
    if not m.dinov2_weights or not Path(m.dinov2_weights).expanduser().is_file():
        raise ConfigError("metric.dinov2_weights", m.dinov2_weights, "a local DINOv2 backbone checkpoint "
                          "(dinov2_vitl14_pretrain.pth / dinov2_vitb14_pretrain.pth) with metric.dinov2_sha256",
                          "file not found" if m.dinov2_weights else "not set")
    if not m.dinov2_sha256:
        raise ConfigError("metric.dinov2_sha256", None, "the sha256 of metric.dinov2_weights (64 hex digits)",
                          "not set")


def _check_cmmd(cfg, info) -> None:
    weights = cfg.metric.cmmd_clip_weights
    if cfg.data.name != "shapes" and (not weights or not Path(weights).expanduser().is_file()):
        raise ConfigError("metric.cmmd_clip_weights", weights, "a local open_clip checkpoint file",
                          cmmd_weights_message(cfg).split(": ", 1)[1])


def _check_fd_inf(cfg, info) -> None:
    check_fd_inf_n(cfg, int(cfg.sampling.num_samples), "images per seed block", "sampling.num_samples")


def check_fd_inf_n(cfg, n: int, images: str, setting: str) -> None:
    """FD∞ fits FD at ``metric.fd_inf_points`` sizes between N/5 and N: N (``setting`` = n) must hold 5 x that many
    ``images``. One-line ConfigError."""
    points = int(cfg.metric.fd_inf_points)
    if n < 5 * points:
        raise ConfigError("metric.fd_inf", True, f"at least 5 x metric.fd_inf_points = {5 * points} {images}",
                          f"{setting} = {n}: too few distinct sizes between N/5 and N")


def _score_fd_inf(sc: Scorer, gen: np.ndarray, ref) -> dict:
    return fd_infinity(gen, ref.mu, ref.sigma, int(sc.m.fd_inf_points), sc.seed)


def _score_prdc(sc: Scorer, gen: np.ndarray, ref) -> dict:
    if ref.features is None:
        return {"prdc_skipped": "reference has mu/sigma only (no features)"}
    return prdc(ref.features, gen, int(sc.m.pr_k), int(sc.m.dc_k))


def _score_cmmd(sc: Scorer, gen: np.ndarray, ref) -> dict:
    sigma = float(sc.m.cmmd_sigma)
    net = sc.score_nets["cmmd"]
    return {"cmmd": cmmd(ref.features, gen, sigma), "cmmd_sigma": sigma, "cmmd_scale": CMMD_SCALE,
            "cmmd_estimator": "biased (V-statistic), full sets, unit embeddings", "cmmd_net": net.label,
            "cmmd_net_hash": net.weights_hash, "cmmd_resize": net.resize, "cmmd_ref_id": ref.meta["ref_id"],
            "cmmd_n_ref": len(ref.features), "cmmd_n_gen": len(gen)}


@dataclass(frozen=True)
class Score:
    """A score beyond FID/KID/IS, switched on by ``metric.<name>``. ``compute(scorer, gen_features, reference)``
    gives its row fields (settings included); ``net(cfg)``: the feature network it needs, if not the cell's (its
    reference comes from the same registry of statistics); ``check(cfg, info)``: its settings, before any work."""

    compute: Callable
    values: tuple[str, ...]  # the row fields that are scores (averaged over seed blocks); the rest are settings
    check: Callable = lambda cfg, info: None  # ranges of its numeric keys: schema.BOUNDS
    net: Callable | None = None
    doc: str = ""


# metric.<name> switch -> Score; each row records the score's settings next to it
SCORES = {
    "prdc": Score(_score_prdc, ("precision", "recall", "density", "coverage"),
                  doc="precision/recall (torch-fidelity prc), density/coverage (prdc)"),
    "cmmd": Score(_score_cmmd, ("cmmd",), _check_cmmd, net=load_cmmd_clip, doc="CMMD on unit CLIP embeddings"),
    "sfid": Score(_score_in_own_space("sfid", _frechet), ("sfid",), _check_inception_weights,
                  net=load_inception_spatial, doc="FD on Inception Mixed_6d.branch1x1[:7] (17x17x7), as ADM's sFID"),
    "fd_dinov2": Score(_score_in_own_space("fd_dinov2", _frechet), ("fd_dinov2",), _check_fd_dinov2,
                       net=load_dinov2,
                       doc="FD on DINOv2 CLS features, dgm-eval preprocessing"),
    "fd_inf": Score(_score_fd_inf, ("fd_inf", "fd_inf_slope", "fd_inf_fd_at_n"), _check_fd_inf,
                    doc="FID extrapolated to N = infinity, the cell's feature network"),
}

# metric.name -> its check (conf/metric/<name>.yaml); the Scorer reads the rest of metric.*
METRICS = Registry("metric", "metric.name", {
    "auto": Entry(check=_check_files, doc="by data set: toy2d swd/mmd; digits digits-FID/KID/IS; shapes + CLIP"),
    "inception": Entry(check=_check_files, doc="FID/KID/IS on Inception-v3 from local weights"),
    "none": Entry(check=lambda cfg, info: _check_no_scores(cfg, "metric=none computes no scores"),
                  doc="no scores (cost only)"),
})


def metric_versions() -> dict:
    out = {}
    for key, dist in (("torchmetrics", "torchmetrics"), ("cleanfid", "clean-fid"), ("open_clip", "open_clip_torch"),
                      ("torch_fidelity", "torch-fidelity"), ("scipy", "scipy")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    return out


def _float(x) -> float:
    return float(np.asarray(x, dtype=np.float64))


def images_fid(cfg, info, image_sets: dict) -> dict:
    """FID of each named set of real-space images (iterables of [-1, 1] tensor batches) against the cell's reference
    statistics, in the cell's feature network, quantised as samples are: ``{name: FID}``. For what a cell's samples
    are set beside (a latent family's VAE reconstructions of held-out images and those images themselves)."""
    net = load_feature_net(cfg, info)
    ref = get_reference(cfg, info, net)
    out = {}
    for name, batches in image_sets.items():
        stats = FeatureStats(keep_features=False)
        for x in batches:
            stats.update(net(quantize_uint8(x.detach().cpu()))[0].detach().cpu().numpy())
        out[name] = distances.frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma)
    return out


class Scorer:
    def __init__(self, cfg, info, cell_dir=None):
        self.cfg, self.info, self.m = cfg, info, cfg.metric
        self.cell_dir = Path(cell_dir) if cell_dir is not None else None
        METRICS[self.m.name]  # one-line ConfigError for an unknown name
        self.seed = int(self.m.seed)
        self.num_samples = int(cfg.sampling.num_samples)
        self.n_gen = 0
        if self.m.name == "none":
            self.mode = "none"
        elif info.kind == "points":
            self.mode = "points"
            self.points: list[np.ndarray] = []
        else:
            self.mode = "images"
            self._init_images(cfg, info)

    # ---- images -------------------------------------------------------------------------------------------
    def _init_images(self, cfg, info) -> None:
        m = self.m
        self.repeats = int(m.repeats)
        if self.repeats < 1:
            raise ConfigError("metric.repeats", self.repeats, "an integer >= 1")
        self.net = load_feature_net(cfg, info)
        self.scores = [name for name in SCORES if m[name]]
        self.score_nets = {}  # score -> its own feature network (None: the cell's)
        for name in self.scores:
            net = SCORES[name].net(cfg) if SCORES[name].net else None
            same = net is not None and (net.name, net.weights_hash, net.resize) == (
                self.net.name, self.net.weights_hash, self.net.resize)
            self.score_nets[name] = self.net if same else net
        need_ref = m.fid or m.kid or any(self.score_nets[n] in (None, self.net) for n in self.scores)
        self.ref = get_reference(cfg, info, self.net) if need_ref else None
        # (seed block of each image, features) per batch of each score in a feature space of its own
        self.score_feats: dict[str, list[tuple]] = {n: [] for n, net in self.score_nets.items()
                                                    if net not in (None, self.net)}
        self.blocks = [FeatureStats() for _ in range(self.repeats)]
        self.logits: list[list[torch.Tensor]] = [[] for _ in range(self.repeats)]  # per seed block
        # auto: CLIP score on shapes when the samples are text(caption)-conditioned; metric.clip_score=true insists
        self.want_clip = bool(m.clip_score) or (m.name == "auto" and cfg.data.name == "shapes" and info.num_classes > 0)
        self.clip_scores: list[torch.Tensor] = []
        self.control: dict[str, list[np.ndarray]] = {"control_iou": [], "control_f1": []}  # controlled samples only
        self.clip = None
        prompted = cfg.get("prompts") is not None and cfg.prompts.name == "file"  # captions from a prompt file
        if self.want_clip:
            if prompted and m.clip_model == "offline":
                raise ConfigError("metric.clip_model", "offline", "an open_clip model name with "
                                  "metric.clip_pretrained=FILE for prompts=file",
                                  "the offline CLIP only knows the shapes captions")
            if not prompted and (not info.class_names or not info.num_classes):
                raise ConfigError("metric.clip_score", True, "a captioned, text-conditioned data set (data=shapes)",
                                  f"data={cfg.data.name} has no captions to score against")
            if m.clip_model == "offline" and cfg.data.name != "shapes":
                raise ConfigError("metric.clip_score", True, "data=shapes with metric.clip_model=offline",
                                  f"the offline CLIP only knows the shapes captions, not data={cfg.data.name}'s")
            if self.net.name == "clip":
                self.clip = self.net
            else:
                self.clip = load_clip(cfg, info)
            self.text_embeds = self.clip.encode_text(list(info.class_names)) if info.class_names else None

    @property
    def measured(self) -> tuple:
        """The names :meth:`measure` may return (what a saved shard hands back to :meth:`add`)."""
        return ("feats", "logits", "clip", "points", "control_iou", "control_f1", *getattr(self, "score_feats", ()))

    def update(self, batch) -> None:
        self.add(batch.index, **self.measure(batch))

    def measure(self, batch) -> dict:
        """Per-image outputs of one batch, what :meth:`add` folds in: feature-net features and logits, CLIP scores,
        or the points themselves. A shard of a sharded/distributed cell saves these (bench.distributed)."""
        x = batch.x.detach().cpu()
        if self.mode == "none":
            return {}
        if self.mode == "points":
            return {"points": x.double().numpy()}
        u8 = quantize_uint8(x)
        feats, logits = self.net(u8)
        out = {"feats": feats.detach().cpu().numpy()}
        for name in self.score_feats:  # scores in a feature space of their own
            out[name] = self.score_nets[name](u8)[0].detach().cpu().numpy()
        if logits is not None:
            out["logits"] = logits.detach().double().cpu().numpy()
        text = None
        if self.clip is not None and batch.labels is not None:
            text = self.text_embeds[batch.labels.cpu().long()]
        elif self.clip is not None and getattr(batch, "prompts", None) is not None:  # a pipeline's own prompts
            text = self.clip.encode_text(list(batch.prompts))
        if text is not None:
            img = feats if self.clip is self.net else self.clip(u8)[0]
            out["clip"] = distances.clip_score(img, text).detach().cpu().numpy()
        if getattr(batch, "control", None) is not None:  # control fidelity: the mask the saved image shows
            iou, f1 = iou_f1(batch.control, extract_masks(u8.float() / 127.5 - 1))
            out.update(control_iou=iou.numpy(), control_f1=f1.numpy())
        return out

    def add(self, index, feats=None, logits=None, clip=None, points=None, control_iou=None, control_f1=None,
            **score_feats) -> None:
        """Fold in the :meth:`measure` outputs of images ``index`` (image i counts in seed block i // num_samples)."""
        index = torch.as_tensor(np.asarray(index)).long()
        self.n_gen += len(index)
        if control_iou is not None:
            self.control["control_iou"].append(np.asarray(control_iou, dtype=np.float64))
            self.control["control_f1"].append(np.asarray(control_f1, dtype=np.float64))
        if points is not None:
            self.points.append(np.asarray(points, dtype=np.float64))
        if feats is None:
            return
        block = (index // self.num_samples).clamp(0, self.repeats - 1).numpy()
        for name, f in score_feats.items():
            self.score_feats[name].append((block, np.asarray(f)))
        for b in np.unique(block).tolist():
            self.blocks[b].update(feats[block == b])
        if logits is not None:
            lg = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
            for b in np.unique(block).tolist():
                self.logits[b].append(lg[torch.from_numpy(block == b)])
        if clip is not None:
            self.clip_scores.append(torch.as_tensor(clip))

    def compute(self) -> dict:
        if self.mode == "none":
            return {"n_gen": self.n_gen}
        if self.n_gen < 2:
            raise ValueError(f"scorer got {self.n_gen} samples; need at least 2")
        if self.mode == "points":
            return self._compute_points()
        return self._compute_images()

    def _compute_images(self) -> dict:
        m, ref = self.m, self.ref
        gen = FeatureStats()
        blocks = [b for b in self.blocks if b.n > 0]
        feats = np.concatenate([b.features() for b in blocks])
        gen.update(feats)  # all images: one set of statistics for the npz
        row = {"feature_net": self.net.name, "feature_net_hash": self.net.weights_hash, "resize": self.net.resize,
               "quantize": QUANTIZE, "n_gen": gen.n, "metric_versions": metric_versions()}
        if self.net.meta.get("test_accuracy") is not None:
            row["feature_net_accuracy"] = round(float(self.net.meta["test_accuracy"]), 4)
        if self.cell_dir is not None:
            self.cell_dir.mkdir(parents=True, exist_ok=True)
            save_npz_atomic(self.cell_dir / "gen_stats.npz", mu=gen.mu, sigma=gen.sigma, n=np.int64(gen.n))
        if ref is not None:
            row.update(ref_id=ref.meta["ref_id"], ref_hash=ref.meta["ref_hash"], n_ref=int(ref.n),
                       reference_split=ref.meta.get("split", "import"))
            if gen.dim != ref.mu.shape[0]:
                raise RefStatsError(f"generated features are {gen.dim}-d but reference {ref.meta['ref_id']} is "
                                    f"{ref.mu.shape[0]}-d (other feature network?)")
        if m.fid and ref is not None:
            row.update(self._fid(gen, blocks, feats))
        if m.kid and ref is not None:
            if ref.features is None:
                row["kid_skipped"] = "reference has mu/sigma only (no features)"
            else:
                row.update(self._kid(blocks, feats))
        for name in self.scores:
            row.update(self._score(name, blocks))
        block_logits = [torch.cat(lg) for lg in self.logits if lg]
        if m.inception_score and block_logits:
            row.update(self._inception_score(block_logits))
        if self.clip is not None:
            if self.clip_scores:
                s = torch.cat(self.clip_scores)
                row.update(clip_score=float(s.mean()), clip_score_std=float(s.std()) if len(s) > 1 else 0.0)
            else:
                row["clip_score_skipped"] = "no labels (unconditional samples have no caption)"
            if self.clip is not self.net:
                row.update(clip_net=self.clip.name, clip_net_hash=self.clip.weights_hash)
        if self.control["control_iou"]:
            iou, f1 = (np.concatenate(self.control[k]) for k in ("control_iou", "control_f1"))
            row.update(control_iou=float(iou.mean()), control_iou_std=float(iou.std(ddof=1)) if len(iou) > 1 else 0.0,
                       control_f1=float(f1.mean()), control_f1_std=float(f1.std(ddof=1)) if len(f1) > 1 else 0.0)
        return row

    def own_space_features(self, name: str) -> np.ndarray:
        """The generated features of a score in a feature space of its own, in the order the images came."""
        return np.concatenate([f for _, f in self.score_feats[name]])

    def _score(self, name: str, blocks: list) -> dict:
        """A score of ``SCORES`` on each seed block (N = ``sampling.num_samples`` images, as FID): one block, its
        fields; several, the mean of each value over the blocks with its std (``<value>_std``, ``_std_over`` =
        seeds, ``_repeats``), and each setting once (a list per block where the blocks differ: zero-radius counts)."""
        score, net = SCORES[name], self.score_nets[name]
        if net in (None, self.net):
            ref, per_block = self.ref, [b.features() for b in blocks]
        else:
            ref = get_reference(self.cfg, self.info, net)
            block = np.concatenate([b for b, _ in self.score_feats[name]])
            f = self.own_space_features(name)
            per_block = [f[block == b] for b in np.unique(block)]
        outs = [score.compute(self, g, ref) for g in per_block]
        if len(outs) == 1:
            return outs[0]
        row = {}
        for k in outs[0]:
            vals = [o[k] for o in outs]
            if k in score.values:
                row.update({k: float(np.mean(vals)), f"{k}_std": float(np.std(vals, ddof=1)),
                            f"{k}_std_over": "seeds", f"{k}_repeats": len(vals)})
            else:
                row[k] = vals[0] if all(v == vals[0] for v in vals) else vals
        return row

    def _kid(self, blocks: list, feats: np.ndarray) -> dict:
        """KID over all images; with seed blocks, its ± is the std of the per-block KIDs (``kid_std_over`` says
        which: torchmetrics' std over random subsets is a spread of subset estimates, not an error bar)."""
        m, ref = self.m, self.ref
        k, k_std, size = distances.kid(feats, ref.features, int(m.kid_subsets), int(m.kid_subset_size), self.seed)
        out = {"kid": k, "kid_std": k_std, "kid_std_over": "subsets", "kid_subset_size": size}
        if len(blocks) > 1:
            per = np.array([distances.kid(b.features(), ref.features, int(m.kid_subsets), int(m.kid_subset_size),
                                          self.seed)[0] for b in blocks])
            out.update(kid=float(per.mean()), kid_std=float(per.std(ddof=1)), kid_std_over="seeds",
                       kid_repeats=len(per))
        return out

    def _inception_score(self, block_logits: list) -> dict:
        """IS in splits of at least IS_SPLIT_SIZE images (Salimans et al.: 10 splits of 5000 out of 50k), at most
        ``metric.is_splits``: smaller splits bias IS low (at N = 300, 10 splits of 30 gave 6.89 against 7.80 on the
        whole set), so below 2 · IS_SPLIT_SIZE images IS is the whole-set value. With seed blocks, IS per block and
        its ± = std over blocks."""
        def one(lg):
            splits = max(1, min(int(self.m.is_splits), lg.shape[0] // IS_SPLIT_SIZE))
            return (*distances.inception_score(lg, splits, self.seed), splits)

        if len(block_logits) > 1:
            per = [one(lg) for lg in block_logits]
            vals = np.array([p[0] for p in per])
            return {"is": float(vals.mean()), "is_std": float(vals.std(ddof=1)), "is_std_over": "seeds",
                    "is_repeats": len(per), "is_splits": per[0][2]}
        mean, std, splits = one(block_logits[0])
        return {"is": mean, "is_std": std, "is_std_over": "splits" if splits > 1 else "none", "is_splits": splits}

    def _fid(self, gen: FeatureStats, blocks: list, feats: np.ndarray) -> dict:
        ref, m = self.ref, self.m
        fd = lambda s: distances.frechet_distance(s.mu, s.sigma, ref.mu, ref.sigma)  # noqa: E731
        if self.repeats > 1:
            if len(blocks) < 2 or min(b.n for b in blocks) < 2:
                raise ValueError(f"metric.repeats={self.repeats} needs >= 2 images in each of {self.repeats} blocks "
                                 f"(got {[b.n for b in self.blocks]})")
            per = np.array([fd(b) for b in blocks])
            return {"fid": float(per.mean()), "fid_std": float(per.std(ddof=1)), "fid_std_over": "seeds",
                    "fid_repeats": len(per),
                    "fid_n": int(round(np.mean([b.n for b in blocks])))}
        out = {"fid": fd(gen), "fid_n": gen.n}
        if int(m.bootstrap) > 0:
            rng = np.random.default_rng(self.seed)
            boots = np.array([fd(FeatureStats.from_features(feats[rng.integers(0, len(feats), len(feats))], False))
                              for _ in range(int(m.bootstrap))])
            lo, hi = np.percentile(boots, [2.5, 97.5])
            out.update(fid_std=float(boots.std(ddof=1)), fid_std_over="bootstrap", fid_ci_low=float(lo),
                       fid_ci_high=float(hi),
                       fid_bootstrap=int(m.bootstrap))
        return out

    # ---- points (toy2d) ------------------------------------------------------------------------------------
    def _compute_points(self) -> dict:
        m = self.m
        x = np.concatenate(self.points)
        n_ref = int(m.toy_num_reference)
        y = np.asarray(sample_true(self.cfg.data, n_ref, seed=TRUE_SAMPLE_SEED + self.seed), dtype=np.float64)
        mmd, h = toy.mmd_rbf(x, y, m.mmd_bandwidth, seed=self.seed)
        if self.cell_dir is not None:
            self.cell_dir.mkdir(parents=True, exist_ok=True)
            s = FeatureStats.from_features(x, keep_features=False)
            save_npz_atomic(self.cell_dir / "gen_stats.npz", mu=s.mu, sigma=s.sigma, n=np.int64(s.n))
        return {"swd": toy.sliced_wasserstein(x, y, int(m.swd_projections), self.seed), "mmd": mmd,
                "mmd_bandwidth": h, "mmd_bandwidth_rule": "fixed" if m.mmd_bandwidth else "median",
                "swd_projections": int(m.swd_projections), "n_gen": len(x), "n_ref": n_ref,
                "ref_id": f"{self.info.id}:true-sampler:seed{TRUE_SAMPLE_SEED + self.seed}",
                "feature_net": "none", "metric_versions": metric_versions()}
