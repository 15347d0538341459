#!/usr/bin/env python3
"""Makes tests/fixtures/augment/augment.safetensors: Mind Reader's training augmentations applied
by torchvision's own functional ops (torchvision 0.20.1, torch 2.5.1) with explicit parameters,
so our kernels can be compared op by op without sharing a random stream.

Mind Reader (sklin93/mind-reader, nsd_utils.get_img_trans) composes, on a [0, 1] float tensor:
RandomResizedCrop(size, scale=(0.8, 1)) → RandomHorizontalFlip(0.5) → ColorJitter(0.4, 0.4, 0.2,
0.1) (p 0.4) → Grayscale(3) (p 0.2) → GaussianBlur(23) (p 0.5) → RandomMask(0.3). Each random
transform reduces to a functional call once its parameters are drawn; those calls are made here:

- crop:    F.resized_crop(img, top, left, h, w, [H, W], BILINEAR, antialias=True)
- flip:    F.hflip
- jitter:  for op in order: F.adjust_brightness / adjust_contrast / adjust_saturation / adjust_hue
           (exactly ColorJitter.forward once get_params has drawn the order and factors)
- gray:    F.rgb_to_grayscale(img, num_output_channels=3)
- blur:    F.gaussian_blur(img, [23, 23], [sigma, sigma])
- cutout:  Mind Reader's RandomMask body with given centres (its np.random.rand() draws): the first
           centre for rows (its `cx` indexes the tensor's H axis), the second for columns
- chain:   all six in that order, per image

Tensors, per image size <name>: `image.<name>` F32 [B, 3, H, W] in [0, 1]; `<op>.<name>` the
output of <op> on it. The metadata key `params` holds a JSON object {<name>: {<op>: [per-image
parameters]}} (null where an image skips the op).

    .venv-fixtures/bin/python scripts/make_augment_fixture.py
"""
import json
import os

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "augment")

# Odd sizes (not multiples of any block), two narrower than the blur kernel (23), one taller than
# wide. torch's reflect padding needs each side > 11 (the kernel's half), so the smallest is 13.
SIZES = {"h37w53": (2, 37, 53), "h29w17": (2, 29, 17), "h64w48": (3, 64, 48), "h13w31": (2, 13, 31)}


def python_round(v):
    """Python's round (half to even), as RandomMask uses it."""
    return int(round(v))


def random_mask(img, first, second, ratio=0.3):
    """Mind Reader's RandomMask(ratio).__call__ with its two centres given."""
    m = ratio / 2.0
    _, x, y = img.shape
    start_x, start_y = python_round((first - m) * x), python_round((second - m) * y)
    end_x, end_y = python_round((first + m) * x), python_round((second + m) * y)
    mask = torch.ones_like(img)
    mask[:, max(0, start_x): min(x - 1, end_x), max(0, start_y): min(y - 1, end_y)] = 0
    return img * mask


def jitter(img, p):
    for op in p["order"]:
        if op == 0:
            img = F.adjust_brightness(img, p["brightness"])
        elif op == 1:
            img = F.adjust_contrast(img, p["contrast"])
        elif op == 2:
            img = F.adjust_saturation(img, p["saturation"])
        else:
            img = F.adjust_hue(img, p["hue"])
    return img


def apply(op, img, p):
    if p is None:
        return img
    if op == "crop":
        top, left, h, w = p
        return F.resized_crop(img, top, left, h, w, list(img.shape[-2:]), InterpolationMode.BILINEAR, antialias=True)
    if op == "flip":
        return F.hflip(img) if p else img
    if op == "jitter":
        return jitter(img, p)
    if op == "gray":
        return F.rgb_to_grayscale(img, num_output_channels=3) if p else img
    if op == "blur":
        return F.gaussian_blur(img, [23, 23], [p, p])
    if op == "cutout":
        return random_mask(img, *p)
    raise ValueError(op)


def draw(rng, h, w, i):
    """Parameters for image i: every op on for some images and off for others, in the reference's ranges."""
    scale, ratio = rng.uniform(0.8, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = min(h, max(1, int(round(np.sqrt(h * w * scale / ratio)))))
    cw = min(w, max(1, int(round(np.sqrt(h * w * scale * ratio)))))
    crop = [int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw]
    if i == 1:
        crop = [0, 0, h, w]  # the whole image: an identity resample
    order = [int(v) for v in rng.permutation(4)]
    jit = {"order": order, "brightness": float(rng.uniform(0.6, 1.4)), "contrast": float(rng.uniform(0.6, 1.4)),
           "saturation": float(rng.uniform(0.8, 1.2)), "hue": float(rng.uniform(-0.1, 0.1))}
    return {
        "crop": crop,
        "flip": i % 2 == 0,
        "jitter": jit if i != 1 else None,
        "gray": i == 1,
        "blur": float(rng.uniform(0.1, 2.0)) if i != 2 else None,
        "cutout": [float(rng.random()), float(rng.random())] if i != 2 else None,
    }


OPS = ["crop", "flip", "jitter", "gray", "blur", "cutout"]


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(11)
    tensors, params = {}, {}
    for name, (b, h, w) in SIZES.items():
        # Smooth colour ramps plus noise: saturated and grey pixels, edges for the blur and crop.
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        base = torch.stack([xx, yy, 1 - xx * yy])
        imgs = (0.6 * base + 0.4 * torch.rand(b, 3, h, w)).clamp(0, 1).float()
        tensors[f"image.{name}"] = imgs.contiguous()
        per = [draw(rng, h, w, i) for i in range(b)]
        params[name] = {op: [p[op] for p in per] for op in OPS}
        for op in OPS:
            tensors[f"{op}.{name}"] = torch.stack([apply(op, imgs[i], per[i][op]) for i in range(b)]).contiguous()
        chained = []
        for i in range(b):
            x = imgs[i]
            for op in OPS:
                x = apply(op, x, per[i][op])
            chained.append(x)
        tensors[f"chain.{name}"] = torch.stack(chained).contiguous()
    meta = {"params": json.dumps(params), "torch": torch.__version__, "torchvision": torchvision.__version__}
    save_file(tensors, os.path.join(OUT, "augment.safetensors"), metadata=meta)
    print({k: tuple(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
