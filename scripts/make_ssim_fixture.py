#!/usr/bin/env python3
"""Makes tests/fixtures/ssim.json: scikit-image's structural_similarity on small random images, for
src/eval/image_metrics.rs (which must match it to 1e-9).

    .venv-fixtures/bin/pip install scikit-image==0.24.0 scipy==1.14.1 numpy==2.1.3
    .venv-fixtures/bin/python scripts/make_ssim_fixture.py

Cases: RGB and grayscale, odd sizes (so no window tiles the image), the field's options
(gaussian_weights=True, sigma=1.5, use_sample_covariance=False; MindEye, Brain-Diffuser) and
scikit-image's defaults (7x7 uniform window, sample covariance), data_range 1 and 2.
"""
import json
import os

import numpy as np
import skimage
from skimage.metrics import structural_similarity

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "ssim.json")


def main():
    rng = np.random.default_rng(5)
    images = []
    for (h, w, c) in [(13, 17, 3), (24, 11, 1), (20, 23, 3)]:
        a = rng.random((h, w, c)).astype(np.float32)
        # a noisy, blurred version of a: SSIM well inside (0, 1)
        b = np.clip(0.6 * a + 0.4 * np.roll(a, 1, axis=1) + 0.1 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
        ssim = {}
        for name, kw in [("field", dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)),
                         ("default", dict())]:
            for data_range in (1.0, 2.0):
                v = structural_similarity(a.astype(np.float64), b.astype(np.float64), channel_axis=2,
                                          data_range=data_range, **kw)
                ssim[f"{name}/{data_range:g}"] = float(v)
        images.append(dict(shape=[h, w, c], a=a.ravel().tolist(), b=b.ravel().tolist(), ssim=ssim))
    with open(OUT, "w") as f:
        json.dump(dict(skimage=skimage.__version__, images=images), f)
    print(f"wrote {OUT}: {len(images)} image pairs")


if __name__ == "__main__":
    main()
