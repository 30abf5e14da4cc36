"""One registry per config group: every conf/<group>/<name>.yaml has exactly one entry and every entry a YAML file,
so adding a sampler / model family / metric is one entry plus one YAML file."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bench.sampling import SAMPLERS
from bench.schema import ConfigError
from bench.validate import REGISTRIES

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_each_config_group_has_one_registry():
    groups = [r.group for r in REGISTRIES]
    assert len(groups) == len(set(groups))
    assert set(groups) == {"data", "model", "objective", "schedule", "sampler", "metric", "tracker", "distill",
                           "prompts", "adapter", "task"}


@pytest.mark.parametrize("registry", REGISTRIES, ids=[r.group for r in REGISTRIES])
def test_registry_matches_yaml_files(registry):
    files = sorted(p.stem for p in (CONF / registry.group).glob("*.yaml"))
    assert files, f"conf/{registry.group}/ has no YAML files"
    assert sorted(registry.names()) == files


@pytest.mark.parametrize("registry", REGISTRIES, ids=[r.group for r in REGISTRIES])
def test_registry_key_names_the_yaml(registry):
    """conf/<group>/<name>.yaml sets <key> = <name> (the registry is looked up by that key); a ``_global_`` package
    file (model=pipeline: it also overrides other groups) sets it under the group's key."""
    field = registry.key.split(".", 1)[1]
    for name in registry:
        path = CONF / registry.group / f"{name}.yaml"
        conf = OmegaConf.load(path)
        if "# @package _global_" in path.read_text():
            conf = conf[registry.group]
        assert conf[field] == name


def test_unknown_name_is_one_line():
    with pytest.raises(ConfigError, match=r"^sampler\.name='plms' is not allowed: one of ddpm, ddim, .*flow_euler$"):
        SAMPLERS["plms"]


def test_each_model_family_has_its_own_schema():
    """conf/model/<name>.yaml, the registry entry MODELS[name] and the schema model/<name>_schema it composes with
    (bench.schema.MODEL_SCHEMAS): one family, one of each."""
    from bench.models import MODELS
    from bench.schema import MODEL_SCHEMAS, ModelConfig

    assert sorted(MODEL_SCHEMAS) == sorted(MODELS.names())
    for name, schema in MODEL_SCHEMAS.items():
        assert issubclass(schema, ModelConfig)
        assert f"{name}_schema" in (CONF / "model" / f"{name}.yaml").read_text(), name
