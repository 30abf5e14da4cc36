"""Cell and model identity (bench/keys.py): the keys of every committed result recomputed from its recorded config."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
COMMITTED = sorted((REPO / "reports" / "data").glob("*/results.jsonl"))
TINY_SD = "/tmp/tiny-sd"  # where the committed tiny-SD studies found their random-weight pipeline


def committed_rows() -> list[tuple[Path, dict]]:
    return [(f.parent, json.loads(line)) for f in COMMITTED for line in f.read_text().splitlines() if line.strip()]


@functools.cache
def _schema_defaults(family: str):
    """Today's schema defaults with the model group as ``family``'s schema (built once per family: converting
    every dataclass is most of the cost of reading a row back)."""
    from bench.schema import GROUPS, MODEL_SCHEMAS, BenchConfig

    base = OmegaConf.structured(BenchConfig)
    for group, node in GROUPS.items():
        base[group] = OmegaConf.structured(node)
    base.model = OmegaConf.structured(MODEL_SCHEMAS[family])
    return base


def recorded_config(root: Path, row: dict):
    """The config a committed row was run with: its cells/<key>/config.yaml over today's schema defaults (a key added
    since the row was written takes its default, as a fresh compose of that command would)."""
    from bench.schema import MODEL_SCHEMAS

    recorded = OmegaConf.load(root / row["config_path"])
    family = MODEL_SCHEMAS[recorded.model.name]  # the family's own keys: the others' are hashed at their frame value
    recorded.model = {k: v for k, v in recorded.model.items() if k in family.__dataclass_fields__}
    return OmegaConf.merge(_schema_defaults(recorded.model.name), recorded)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """The committed tiny-SD rows' pipeline, rebuilt: `bench-tiny-pipeline sd` is seeded, so its files (and their
    fingerprint) are the ones those rows were keyed with under diffusers of the version they record."""
    from bench.models import tiny

    return tiny.save("sd", tmp_path_factory.mktemp("committed") / "tiny-sd")


def test_every_committed_row_keeps_its_cell_key_and_model_key(tiny_sd, monkeypatch):
    import diffusers

    from bench import keys
    from bench.adapt import KINDS, adapter_key
    from bench.distill import student_keys
    from bench.models import diffusers_checkpoint as checkpoints

    own_resolve = checkpoints.resolve
    monkeypatch.setattr(checkpoints, "resolve", lambda p: tiny_sd if str(p) == TINY_SD else own_resolve(p))
    rows = committed_rows()
    assert len(rows) >= 183  # every study under reports/data
    checked, wrong = 0, []
    for root, row in rows:
        if row["model"] == "pipeline" and row["diffusers"] != diffusers.__version__:
            continue  # another diffusers writes other config files: the rebuilt pipeline is not the keyed one
        cfg = recorded_config(root, row)
        model_key = keys.model_key(cfg)
        if cfg.distill.method != "none":  # the row's model is the last student (none: the teacher at its own steps)
            model_key = ([model_key] + [key for _, _, key in student_keys(cfg, model_key)])[-1]
        if cfg.adapter.kind != "none":  # the row's model is the adapter on its base model
            model_key = adapter_key(cfg, KINDS[cfg.adapter.kind], model_key)[1]
        got = {"cell_key": keys.cell_key(cfg), "model_key": model_key}
        if row.get("classifier_key"):
            got["classifier_key"] = keys.classifier_key(cfg)
        if row.get("vae_key"):
            got["vae_key"] = keys.vae_key(cfg)
        want = {k: row[k] for k in got}
        if got != want:
            wrong.append(f"{root.name}/{row['cell_key']}: {want} != {got}")
        checked += 1
    assert not wrong, "\n".join(wrong)
    assert checked == len(rows)


# ------------------------------------------------------------------------------------------- every key classified

CONF = REPO / "conf"
GROUPS = ("data", "model", "objective", "schedule", "sampler", "metric", "tracker", "distill", "prompts", "experiment",
          "family", "sweep", "adapter", "task")


def leaves(node, prefix=""):
    """Dotted names of every leaf (a scalar or a list) of a plain config dict."""
    for k, v in node.items():
        if isinstance(v, dict):
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_every_config_key_of_every_option_is_classified(compose_cfg):
    """A key that is not declared in bench.keys.SETTINGS (model / cell / run) would be left out of every key, or
    hashed without anyone deciding it should be: each group option's composed config is walked, leaf by leaf."""
    from bench import keys

    declared = keys.declared()
    seen, unclassified = set(), {}
    options = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
    assert len(options) > 40
    for group, option in options:
        cfg = OmegaConf.to_container(compose_cfg(f"{group}={option}"), resolve=False)
        for key in leaves(cfg):
            seen.add(key)
            if key not in declared:
                unclassified.setdefault(key, f"{group}={option}")
    assert not unclassified, f"declare these in bench.keys.SETTINGS (with their role): {unclassified}"
    assert set(declared) <= seen, f"declared but in no config: {set(declared) - seen}"
    assert {s.role for s in declared.values()} == set(keys.ROLES)


def test_settings_added_after_the_first_frame_have_a_default_and_a_version():
    from bench import keys

    for dotted, s in keys.declared().items():
        assert 1 <= s.since <= keys.KEY_VERSION, dotted
        assert s.default is not keys.REQUIRED or s.since == 1, dotted
        assert not s.frozen or (s.role == keys.RUN and s.since == 1), dotted


def test_a_group_that_loses_a_field_keeps_its_keys(compose_cfg):
    """A family whose config no longer carries another family's keys (model=dit without the unet's) hashes the frame
    default in their place: the same model and cell keys."""
    from bench import keys

    cfg = compose_cfg("model=dit")
    full = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    unet_only = ("hidden", "layers", "time_embed_dim", "block_out_channels", "down_block_types", "up_block_types",
                 "layers_per_block", "vae", "latent_channels", "vae_block_out_channels", "text_encoder", "path")
    assert not set(unet_only) & set(cfg.model)  # the dit's schema has none of them
    for k in unet_only:
        full.model[k] = keys.setting(f"model.{k}").default
    assert keys.model_key(full) == keys.model_key(cfg) and keys.cell_key(full) == keys.cell_key(cfg)


# --------------------------------------------------------------- every setting that changes a number is in the key

def test_a_prompt_files_content_is_in_the_cell_key(compose_cfg, tmp_path):
    """Before: prompts.path was hashed as a string, so an edited prompt file kept its cell key (and its old FID)."""
    from bench import keys
    from bench.utils import path_fingerprint

    f = tmp_path / "prompts.txt"
    f.write_text("a red circle\na blue square\n")
    args = ("data=shapes", "model=pipeline", f"model.path={tmp_path / 'pipe'}", "prompts=file", f"prompts.path={f}")
    before = keys.cell_key(compose_cfg(*args))
    f.write_text("a green triangle at the top\na blue square\n")
    cfg = compose_cfg(*args)
    assert keys.cell_key(cfg) != before
    assert keys.key_settings(cfg)["prompts.path_content"] == path_fingerprint(f)


def test_trainer_precision_is_in_every_trained_models_key(compose_cfg):
    """Before: 32-true and bf16-mixed gave one model key and one cell key (other weights, FID 18.0133 vs 18.0303), so
    a shared cache reused whichever trained first. The default stays out of the hash: existing keys hold."""
    from bench import keys
    from bench.distill import student_keys

    cfg, bf16 = compose_cfg(), compose_cfg("trainer.precision=bf16-mixed")
    assert "trainer" not in keys.model_key_config(cfg) and "trainer" not in keys.cell_config(cfg)
    assert keys.model_key(bf16) != keys.model_key(cfg) and keys.cell_key(bf16) != keys.cell_key(cfg)
    assert keys.key_settings(bf16)["trainer.precision"] == "bf16-mixed"
    assert keys.key_settings(cfg)["trainer.precision"] == "32-true"
    latent = ("model=latent_unet",)
    assert keys.vae_key(compose_cfg(*latent)) != keys.vae_key(compose_cfg(*latent, "trainer.precision=bf16-mixed"))
    assert keys.classifier_key(cfg) != keys.classifier_key(bf16)
    d = ("distill=consistency",)
    a, b = compose_cfg(*d), compose_cfg(*d, "trainer.precision=bf16-mixed")
    assert student_keys(a, "teacher")[-1][2] != student_keys(b, "teacher")[-1][2]  # the same teacher, another student


@pytest.mark.parametrize("override, key", [("sampler.solver_order=3", "sampler.solver_order"),
                                           ("sampler.use_karras_sigmas=true", "sampler.use_karras_sigmas"),
                                           ("trainer.precision=bf16-mixed", "trainer.precision"),
                                           ("data.hflip=true", "data.hflip")])
def test_the_row_records_every_setting_in_the_cell_key(compose_cfg, override, key):
    """key_settings (a row column) holds every setting the cell key holds, so rows that differ in one of them are
    never pooled as seeds of one configuration."""
    from bench import keys

    a, b = keys.key_settings(compose_cfg()), keys.key_settings(compose_cfg(override))
    assert a[key] != b[key] and {k for k in a if a[k] != b.get(k)} == {key}
    assert not any(k.startswith(("tracker.", "cost.", "trainer.devices", "sampling.batch_size")) for k in a)


def test_a_run_row_holds_its_key_settings(tmp_path, capsys, monkeypatch):
    from bench import keys
    from bench.results import read_rows
    from reliability_helpers import TOY, compose
    from test_bad_inputs import cli

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    code, err, root = cli(tmp_path, capsys, monkeypatch, *TOY, "hydra.mode=RUN", "sampler.solver_order=3")
    assert code == 0, err
    (row,) = read_rows(root / "toy2d")
    cfg = compose(*TOY, "hydra.mode=RUN", "sampler.solver_order=3", f"out_dir={root}", cache=tmp_path / "cache")
    assert row["key_settings"] == keys.key_settings(cfg) and row["key_settings"]["sampler.solver_order"] == 3
    assert row["cell_key"] == keys.cell_key(cfg)


# ------------------------------------------------------------------------------------ settings without an effect

def test_a_negative_prompt_without_guidance_is_normalised_out(compose_cfg, tmp_path):
    """Before: a negative prompt at guidance 1 (where no CFG pass uses it) made a new cell and was recorded."""
    from bench import keys

    base = ("data=shapes", "model=pipeline", f"model.path={tmp_path / 'pipe'}", "prompts=shapes")
    plain = compose_cfg(*base, "sampling.guidance_scale=1")
    neg = compose_cfg(*base, "sampling.guidance_scale=1", "prompts.negative_prompt=blurry")
    assert keys.cell_key(neg) == keys.cell_key(plain)
    assert keys.key_settings(neg)["prompts.negative_prompt"] == ""
    assert keys.normalise(neg).prompts.negative_prompt == ""  # what the run uses and its row records
    assert "guidance" in keys.no_effect(neg)["prompts.negative_prompt"]
    cfg_on = compose_cfg(*base, "sampling.guidance_scale=7.5", "prompts.negative_prompt=blurry")
    assert keys.cell_key(cfg_on) != keys.cell_key(compose_cfg(*base, "sampling.guidance_scale=7.5"))
    assert keys.normalise(cfg_on) is cfg_on


def test_cosine_betas_are_normalised_out_and_accepted(compose_cfg, tmp_path):
    """Before: schedule=cosine with schedule.beta_end set was refused as "silently wrong" for a cosine checkpoint;
    the cosine schedule has no betas, so the key (and the check) leave them out."""
    from bench import keys
    from bench.models import tiny
    from bench.validate import validate

    cos = compose_cfg("schedule=cosine")
    moved = compose_cfg("schedule=cosine", "schedule.beta_end=0.03", "schedule.beta_start=0.001")
    assert keys.cell_key(moved) == keys.cell_key(cos) and keys.model_key(moved) == keys.model_key(cos)
    assert keys.model_key(compose_cfg("schedule.beta_end=0.03")) != keys.model_key(compose_cfg())  # linear: used
    ckpt = tiny.save("ddpm-cosine-v", tmp_path / "ddpm")
    validate(compose_cfg("data.channels=3", "data.image_size=16", "model=pipeline", f"model.path={ckpt}",
                         "sampler=ddim", "schedule=cosine", "schedule.beta_end=0.03"))
