#!/usr/bin/env python3
"""Makes tests/fixtures/preprocess/preprocess.safetensors: CLIP's image preprocessing as OpenAI's
clip.load builds it (torchvision 0.20.1 on PIL 11.0.0 images):

    Compose([Resize(n, interpolation=InterpolationMode.BICUBIC), CenterCrop(n), _convert_image_to_rgb, ToTensor(),
             Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])

on small random u8 RGB images of odd sizes. Resize on a PIL image is PIL's `Image.resize(…,
BICUBIC)`: separable cubic (a = −0.5) whose support widens by the scale when shrinking (so it
antialiases), horizontal pass first, each pass rounded to u8.

Tensors: `image.<name>` u8 values stored as F32 `[B, H, W, 3]`; `expected.<name>.<n>` F32
`[B, 3, n, n]`. Images in one entry share a size (a batch).

    .venv-fixtures/bin/python scripts/make_preprocess_fixture.py
"""
import os

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import CenterCrop, InterpolationMode, Compose, Normalize, Resize, ToTensor

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "preprocess")

# name: (batch, height, width, sizes n to preprocess to)
IMAGES = {
    "h37w53": (1, 37, 53, [224, 32]),
    "h64w64x2": (2, 64, 64, [32]),
    "h300w200": (1, 300, 200, [224, 32]),
    "h251w317": (1, 251, 317, [32, 7]),
    "h5w3": (1, 5, 3, [8]),
}


def transform(n):
    return Compose([
        Resize(n, interpolation=InterpolationMode.BICUBIC),
        CenterCrop(n),
        lambda im: im.convert("RGB"),
        ToTensor(),
        Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(5)
    tensors = {}
    for name, (b, h, w, sizes) in IMAGES.items():
        # Smooth gradients plus noise: both flat areas and sharp edges for the cubic's overshoot.
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 2 * 255], -1)
        imgs = [np.clip(base * 0.5 + rng.integers(0, 256, (h, w, 3)) * 0.5, 0, 255).astype(np.uint8) for _ in range(b)]
        batch = np.stack(imgs)
        tensors[f"image.{name}"] = torch.from_numpy(batch.astype(np.float32))
        for n in sizes:
            t = transform(n)
            out = torch.stack([t(Image.fromarray(im, "RGB")) for im in imgs])
            tensors[f"expected.{name}.{n}"] = out.contiguous()
    meta = {"pillow": PIL.__version__, "torchvision": torchvision.__version__, "torch": torch.__version__}
    save_file(tensors, os.path.join(OUT, "preprocess.safetensors"), metadata=meta)
    print({k: tuple(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
