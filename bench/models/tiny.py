"""Tiny diffusers pipelines with random weights, built and saved offline: what ``model=pipeline`` is tested with here.

No hub access: the CLIP tokenizer is written from a byte-level vocabulary (the 256 byte symbols, with and without the
end-of-word mark, plus CLIP's start/end tokens; no merges), the text encoders and denoisers from small configs. The
pipelines are the real diffusers classes, so loading, scheduler swapping and ``__call__`` are exercised exactly as
for a real checkpoint; their images are noise (random weights), their numbers are only for checking the harness.

    bench-tiny-pipeline sd /tmp/tiny-sd              # StableDiffusionPipeline, 16 x 16 images (shapes' size)
    bench-tiny-pipeline sd3 /tmp/tiny-sd3            # StableDiffusion3Pipeline (flow matching; no T5 tower)
    bench-tiny-pipeline ddpm /tmp/tiny-ddpm          # DDPMPipeline, linear betas / epsilon
    bench-tiny-pipeline ddpm-cosine-v /tmp/tiny-ddpm # DDPMPipeline, squaredcos_cap_v2 / v_prediction
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMPipeline,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)

KINDS = ("ddpm", "ddpm-cosine-v", "sd", "sd3")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable unicode map (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def save_clip_tokenizer(out: Path, max_length: int = 77):
    """A CLIPTokenizer over the byte alphabet (every character is one token), saved with save_pretrained."""
    from transformers import CLIPTokenizer  # lazy: transformers is needed only for text-to-image pipelines

    out.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=max_length)
    tok.save_pretrained(out)
    return tok


def _clip_text_config(tok, projection: bool = False):
    from transformers import CLIPTextConfig  # lazy: as above

    return CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=2, max_position_embeddings=tok.model_max_length, projection_dim=32,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def _vae(image_size: int, sd3: bool = False):
    extra = dict(shift_factor=0.0609, scaling_factor=1.5305) if sd3 else {}  # SD3's VAE shifts its latents too
    return AutoencoderKL(**extra, in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=image_size)


def build(kind: str, image_size: int = 16, seed: int = 0):
    """The pipeline object of ``kind`` (random weights from ``seed``), not saved."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: one of {', '.join(KINDS)}")
    torch.manual_seed(seed)
    if kind.startswith("ddpm"):
        unet = UNet2DModel(sample_size=image_size, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                           layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8)
        sched = (DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
                 if kind == "ddpm-cosine-v" else DDPMScheduler())  # DDPMScheduler() keeps clip_sample=True
        return DDPMPipeline(unet=unet, scheduler=sched)
    with tempfile.TemporaryDirectory() as d:
        tok = save_clip_tokenizer(Path(d))
        from transformers import CLIPTokenizer  # lazy: as above

        tok = CLIPTokenizer.from_pretrained(d)
    vae = _vae(image_size, sd3=kind == "sd3")
    if kind == "sd":
        from transformers import CLIPTextModel  # lazy: as above

        unet = UNet2DConditionModel(sample_size=image_size // 2, in_channels=4, out_channels=4,
                                    block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=32,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8,
                                    attention_head_dim=4)
        sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False)  # SD 1.x's shipped scheduler config
        return StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(_clip_text_config(tok)), tokenizer=tok,
                                       unet=unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    from transformers import CLIPTextModelWithProjection  # lazy: as above

    transformer = SD3Transformer2DModel(sample_size=image_size // 2, patch_size=2, in_channels=4, out_channels=4,
                                        num_layers=2, attention_head_dim=8, num_attention_heads=4,
                                        joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=64,
                                        pos_embed_max_size=image_size)
    enc = [CLIPTextModelWithProjection(_clip_text_config(tok)) for _ in range(2)]
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=enc[0], tokenizer=tok, text_encoder_2=enc[1],
                                    tokenizer_2=tok, text_encoder_3=None, tokenizer_3=None)


def save(kind: str, out: str | Path, image_size: int = 16, seed: int = 0) -> Path:
    """Build ``kind`` and ``save_pretrained`` it to ``out`` (a directory ``model.path`` can name)."""
    out = Path(out)
    build(kind, image_size, seed).save_pretrained(out)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="bench-tiny-pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("out", help="directory to write (save_pretrained)")
    p.add_argument("--image-size", type=int, default=16, help="pixels (default 16: data=shapes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    a = p.parse_args(argv)
    print(save(a.kind, a.out, a.image_size, a.seed), file=sys.stderr)


if __name__ == "__main__":
    main()
