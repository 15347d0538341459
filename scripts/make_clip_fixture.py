#!/usr/bin/env python3
"""Makes tests/fixtures/clip/: a small randomly initialised Hugging Face `CLIPModel` and its outputs.

- tests/fixtures/clip/tiny/{config.json, model.safetensors}: `save_pretrained` of a CLIPModel with
  the real vocabulary (49408) and context (77) but tiny widths: vision 32 px / patch 8 (17 tokens),
  width 48, 3 layers, 4 heads; text width 32, 3 layers, 2 heads; projection 24. Weights are stored
  as f16 (the token table dominates: 49408×32) to keep the file small and to exercise the f16 path.
- tests/fixtures/clip/tiny_io.safetensors: inputs and transformers' outputs, computed in f32 from
  the f16-rounded weights (so the stored weights are exactly the ones used):
  pixel_values [2,3,32,32], input_ids [3,77] (stored as f32, exact below 2²⁴; BOS … EOS then padding: 0s in one row,
  49407s — HF's pad = EOS — in another, a full row without padding in the third),
  image_features/text_features (get_*_features: the projected, unnormalised embeddings),
  image_embeds/text_embeds (CLIPModel's L2-normalised outputs), logits_per_image [2,3].

Pinned: torch 2.5.1, safetensors 0.4.5 (scripts/requirements-fixtures.txt) and transformers 4.46.3:
    .venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt transformers==4.46.3
    .venv-fixtures/bin/python scripts/make_clip_fixture.py
"""
import os

import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "clip")


def main():
    torch.manual_seed(0)
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                # openai/clip-vit-base-patch32's legacy eos id: HF pools at argmax(input_ids) (the highest id).
                eos_token_id=2)
    vision = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, image_size=32,
                  patch_size=8, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    model = CLIPModel(config).eval()
    # Random init leaves LayerNorm at (1, 0) and small weights: perturb every parameter so that
    # every term matters (a wrong LN bias or a missing residual changes the output).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                continue
            p.add_(torch.randn_like(p) * (0.05 if p.dim() > 1 else 0.1))
        model.half()
    model.save_pretrained(os.path.join(OUT, "tiny"), safe_serialization=True)
    model.float()

    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.zeros(3, 77, dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    for row, (length, pad) in enumerate([(9, 0), (20, 49407), (77, None)]):
        body = torch.randint(1, 49406, (length - 2,), generator=g)
        ids[row, :length] = torch.cat([torch.tensor([49406]), body, torch.tensor([49407])])
        if pad is not None:
            ids[row, length:] = pad
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
        img_f = model.get_image_features(pixel_values=pixels)
        txt_f = model.get_text_features(input_ids=ids)
    tensors = {
        "pixel_values": pixels, "input_ids": ids.float(),  # f32: the engine reads f32/bf16/f16 only; ids < 2²⁴ are exact
        "image_features": img_f, "text_features": txt_f,
        "image_embeds": out.image_embeds, "text_embeds": out.text_embeds,
        "logits_per_image": out.logits_per_image,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "tiny_io.safetensors"))


if __name__ == "__main__":
    main()
