"""cost.compile: compiled sampling of the harness's own models matches the eager samples within one uint8 level
(the measured difference is in the row), is compiled once per model and process (the second cell reuses it), and its
compile time is kept out of the latency; a compiled model that drifts is refused; bad values are one ConfigError."""

import pytest
import torch

from bench.perf.experiments import TINY_UNET
from reliability_helpers import DIGITS, compose, trained

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*DIGITS, *TINY_UNET]  # the smallest UNet graph: the compile takes seconds, not minutes
CELL = [*TINY, "metric=none", "sampling.num_samples=16", "hydra.mode=RUN", "cost.compile=default"]


def test_compiled_cells_match_eager_reuse_the_compile_and_time_it_apart(tmp_path):
    from bench import cell
    from bench.sampling.compiled import _COMPILED, ONE_UINT8_LEVEL

    trained(TINY)
    _COMPILED.clear()  # this test's first cell compiles (nothing compiled earlier in this process is reused)
    torch._dynamo.reset()
    first = cell.run_cell(compose(*CELL, f"out_dir={tmp_path}", "name=compiled"))
    second = cell.run_cell(compose(*CELL, f"out_dir={tmp_path}", "name=compiled", "sampler=euler"))
    eager = cell.run_cell(compose(*CELL, f"out_dir={tmp_path}", "name=eager", "cost.compile=none"))
    print({k: (first[k], second[k]) for k in ("compile_s", "compile_check_s", "compile_max_abs_diff", "sample_s",
                                                "latency_p50")})
    assert first["cell_key"] == eager["cell_key"] != second["cell_key"]  # cost.* is in no key
    assert (eager["compile"], eager["compile_mode"]) == (False, "none") and "compile_s" not in eager
    for row in (first, second):
        assert row["status"] == "ok" and (row["compile"], row["compile_mode"]) == (True, "default")
        assert 0 <= row["compile_max_abs_diff"] <= ONE_UINT8_LEVEL and row["compile_check_images"] == 8
    assert not first["compile_reused"] and second["compile_reused"] and len(_COMPILED) == 1
    # compiling took seconds; sampling 16 images of 2 steps on the compiled model takes a fraction of one, so the
    # compile is not inside the timed batches; the second cell (same shapes) compiles nothing
    assert first["sample_s"] < first["compile_s"] / 5 and second["compile_s"] < first["compile_s"] / 5


class _Drifted(torch.nn.Module):
    """A 'compiled' model whose outputs have the wrong sign: what a broken compile would look like."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t, class_labels=None):
        return -self.model(x, t, class_labels=class_labels)


def test_a_compiled_model_that_drifts_is_refused(compose_cfg, monkeypatch):
    from bench.data import get_data_info
    from bench.models import build_model
    from bench.sampling import build_sampler, compiled
    from bench.sampling.subject import Denoiser, Provenance, sampling_call
    from bench.schema import ConfigError

    cfg = compose_cfg("sampling.num_samples=4", "sampling.batch_size=4", "sampling.num_inference_steps=2")
    info = get_data_info(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, info).eval()
    eager = Denoiser(model, build_sampler(cfg.sampler, cfg.schedule, cfg.objective.name), info.num_classes,
                     Provenance("eps", "linear", "leading"))
    call = sampling_call(cfg.sampling, cfg.sampler, cfg.cost, cfg.metric, cfg.model, info, "cpu")
    drifted = _Drifted(model)
    monkeypatch.setattr(compiled, "compiled_model", lambda *a: (drifted, False))
    monkeypatch.setitem(compiled._COMPILED, ("k",), drifted)
    with pytest.raises(ConfigError, match=r"cost.compile='default' is not allowed: none for this model \(its "
                                          r"compiled samples differ from the eager ones by [0-9.]+ > one uint8 "
                                          r"level \(0.00784\) on images 0..3\)"):
        compiled.compile_denoiser(eager, "default", "k", call)
    assert ("k",) not in compiled._COMPILED  # never reused by a later cell
    plain = compiled.compile_denoiser(eager, "none", "k", call)  # no compile: the eager model, said so in the row
    assert plain.model is model and plain.columns().groups[-1].columns() == {"compile": False, "compile_mode": "none"}


def test_the_check_compares_images_as_they_are_scored():
    from bench.sampling.compiled import ONE_UINT8_LEVEL, image_diff

    x = torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    assert image_diff(x, x + 0.01) == pytest.approx(0.01) and 0.01 > ONE_UINT8_LEVEL  # a drift of 1.3 levels
    assert image_diff(x * 50, x * 50 + 0.5) == pytest.approx(0.5)  # where either is an in-range pixel
    assert image_diff(torch.full((1, 4), 3.0), torch.full((1, 4), 7.0)) == 0  # both saturate to the same pixel


@pytest.mark.parametrize("overrides, message", [
    (["cost.compile=fast"], "cost.compile='fast' is not allowed: one of none, default, reduce-overhead"),
    (["cost.compile=reduce-overhead", "device=cpu"], "cost.compile='reduce-overhead' is not allowed: none or default "
                                                     "without a CUDA device (reduce-overhead records CUDA graphs)"),
    (["cost.compile=default", "sampling.devices=2"], "cost.compile='default' is not allowed: none with "
                                                     "sampling.devices > 1 (the compiled model lives in one process)"),
    (["model=pipeline", "cost.compile=default"], "cost.compile='default' is not allowed: none with model=pipeline (a "
                                                 "loaded pipeline compiles its denoiser with model.compile)"),
])
def test_bad_compile_settings_are_one_config_error(compose_cfg, overrides, message):
    from bench.schema import ConfigError
    from bench.validate import validate

    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(*overrides))
    assert str(e.value) == message


def test_compile_is_not_part_of_the_cell_key(compose_cfg):
    from bench.keys import cell_key

    assert cell_key(compose_cfg()) == cell_key(compose_cfg("cost.compile=default"))
