"""What CLIP-I reads for real images: the subject fidelity (bench.adapt.dreambooth.clip_i) of the data set's own
test items of each colour of the subject's shape against the subject's instance images, with the offline CLIP and
the DreamBooth study's data and adapter settings. The subject's own colour is the ceiling a learned subject is read
against; the other colours show what a right shape in a wrong colour scores.

    OMP_NUM_THREADS=1 python scripts/dreambooth_reference.py [--n 32] [OVERRIDE ...]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

CONF = str(Path(__file__).resolve().parent.parent / "conf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="real items per colour (the study's adapter.num_eval)")
    parser.add_argument("overrides", nargs="*", help="config overrides after sweep=dreambooth")
    args = parser.parse_args()

    from bench.adapt import common, dreambooth
    from bench.data.catalog import build_dataset
    from bench.data.shapes import SHAPES_COLOURS, shapes_classes_of
    from bench.evaluators.clip import load_clip
    from bench.images import quantize_uint8
    from bench.schema import register

    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("bench", overrides=["sweep=dreambooth", "tracker=none", *args.overrides])
    torch.set_num_threads(int(cfg.cost.num_threads))
    colour, kind = dreambooth.subject(cfg.adapter)
    clip = load_clip(cfg)
    real = clip.encode_image(quantize_uint8(dreambooth.instance_images(cfg.data, cfg.adapter))).double()
    print(f"CLIP-I against {int(cfg.adapter.num_instance)} instance images of '{colour} {kind}' "
          f"({args.n} test items per colour, {clip.label})")
    for c in SHAPES_COLOURS:
        items = build_dataset(common.with_classes(cfg.data, shapes_classes_of(c, kind)), "test")
        x, _ = items.get_batch(list(range(min(args.n, len(items)))))
        score = dreambooth.clip_i(clip.encode_image(quantize_uint8(x)).double(), real)
        print(f"  {c} {kind}{' (the subject)' if c == colour else ''}: {score:.3f}")


if __name__ == "__main__":
    main()
