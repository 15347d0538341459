#!/usr/bin/env python3
"""Makes tests/fixtures/lafite/: PyTorch reference fixtures for the Lafite generator/discriminator,
computed on the CPU with the reference code itself (the Lafite fork inside sklin93/mind-reader).

The fork is test input and is never copied into this repository; get it with

    git clone https://github.com/sklin93/mind-reader

and pass its StyleGAN2 folder (the one holding training/, torch_utils/, dnnlib/) with --fork, or set
LAFITE_FORK (default /tmp/fork/StyleGAN2). Then, from the repository root:

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install torch==2.5.1 safetensors==0.4.5 numpy==2.1.3 requests==2.32.3
    .venv-fixtures/bin/python scripts/make_lafite_fixtures.py --fork mind-reader/StyleGAN2

(The pins are in scripts/requirements-fixtures.txt; `requests` is only needed because the fork's
dnnlib/util.py imports it.) Everything runs in float32 on the CPU; the fork's custom CUDA ops are
never built: upfirdn2d/bias_act are called with impl='ref' here, and on a CPU tensor the networks
take the same reference paths.

Outputs (see tests/fixtures/lafite/README.md for the full list of tensors):
  ops.safetensors              each op alone (upfirdn2d, conv2d_resample, bias_act, modulated_conv2d,
                               MinibatchStdLayer, normalize_2nd_moment) with inputs, y, dy and the
                               autograd gradients of sum(y*dy)
  layer.safetensors            SynthesisLayer (up=2, stride-1 with a small clamp) and ToRGBLayer
  g_s2/g_s4.safetensors        Generator checkpoints (state_dict + init_kwargs metadata)
  g_s2_io/g_s4_io.safetensors  Generator inputs and outputs
  d_s2/d_s4.safetensors        Discriminator checkpoints
  d_s2_io/d_s4_io.safetensors  Discriminator inputs and outputs
"""
import argparse
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "lafite")


def import_fork(path):
    path = os.path.abspath(path)
    if not os.path.isdir(os.path.join(path, "training")) or not os.path.isdir(os.path.join(path, "torch_utils")):
        sys.exit(f"--fork {path}: expected the mind-reader StyleGAN2 folder (with training/, torch_utils/, dnnlib/)")
    sys.path.insert(0, path)
    global dnnlib, networks, upfirdn2d, conv2d_resample, bias_act
    import dnnlib  # noqa: F401
    from training import networks
    from torch_utils.ops import upfirdn2d, conv2d_resample, bias_act


def f32(t):
    return t.detach().to(torch.float32).contiguous().clone()


def save(name, tensors, metadata):
    tensors = {k: f32(v) for k, v in tensors.items()}
    for k, v in tensors.items():
        assert torch.isfinite(v).all(), f"{name}: {k} has non-finite values"
    path = os.path.join(OUT, name)
    save_file(tensors, path, metadata={k: str(v) for k, v in metadata.items()})
    print(f"wrote {name}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")


def with_grads(fn, inputs, grad_names):
    """Runs y = fn(**inputs) under autograd; returns y, dy and d<name> = d sum(y*dy)/d input."""
    leaves = {k: v.detach().clone().requires_grad_(k in grad_names) for k, v in inputs.items()}
    y = fn(**leaves)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    out = {"y": y, "dy": dy}
    for k, g in grad_names.items():
        out[g] = leaves[k].grad
    return out


# ---------------------------------------------------------------------------------------------
# 1. ops.safetensors


def ops_fixture():
    tensors, meta = {}, {"torch": torch.__version__}
    seed = [1000]

    def case(name, params, inputs, fn, grads):
        res = with_grads(fn, inputs, grads)
        for k, v in inputs.items():
            tensors[f"{name}.{k}"] = v
        for k, v in res.items():
            tensors[f"{name}.{k}"] = v
        meta[name] = json.dumps(params)

    def next_seed():
        torch.manual_seed(seed[0])
        seed[0] += 1

    std_f = lambda: upfirdn2d.setup_filter([1, 3, 3, 1])

    # upfirdn2d
    for name, shape, up, down, pad, gain, filt in [
        ("up2", [2, 3, 5, 7], 2, 1, [2, 1, 2, 1], 4, None),
        ("down2", [2, 3, 9, 8], 1, 2, [1, 1, 1, 1], 1, None),
        ("pad2", [2, 3, 6, 5], 1, 1, [2, 2, 2, 2], 1, None),
        ("asym", [1, 2, 6, 7], 1, 1, [1, 2, 0, 3], 1.5, "randn34"),
        ("crop", [1, 2, 8, 8], 2, 2, [-1, 0, 1, -2], 2, None),
    ]:
        next_seed()
        x = torch.randn(shape)
        f = torch.randn([3, 4]) if filt == "randn34" else std_f()
        params = {"op": "upfirdn2d", "up": up, "down": down, "padding": pad, "flip_filter": False, "gain": gain,
                  "filter": "randn [3,4], not normalized" if filt else "setup_filter([1,3,3,1])"}

        def fn(x, f, up=up, down=down, pad=pad, gain=gain):
            return upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=False, gain=gain, impl="ref")
        case(name, params, {"x": x, "f": f}, fn, {"x": "dx"})

    # conv2d_resample
    for name, xs, ws, up, down, pad, flip in [
        ("conv_up", [2, 4, 5, 5], [3, 4, 3, 3], 2, 1, 1, False),
        ("conv_down", [2, 4, 9, 9], [3, 4, 3, 3], 1, 2, 1, True),
        ("conv_down_1x1", [2, 4, 8, 8], [3, 4, 1, 1], 1, 2, 0, True),
        ("conv_same", [2, 4, 7, 6], [3, 4, 3, 3], 1, 1, 1, True),
    ]:
        next_seed()
        x, w, f = torch.randn(xs), torch.randn(ws), std_f()
        params = {"op": "conv2d_resample", "up": up, "down": down, "padding": pad, "groups": 1, "flip_weight": flip,
                  "flip_filter": False, "filter": "setup_filter([1,3,3,1])"}

        def fn(x, w, f, up=up, down=down, pad=pad, flip=flip):
            return conv2d_resample.conv2d_resample(x, w, f, up=up, down=down, padding=pad, groups=1, flip_weight=flip)
        case(name, params, {"x": x, "w": w, "f": f}, fn, {"x": "dx", "w": "dw"})

    next_seed()
    x, w, b = torch.randn([2, 6, 9, 7]), torch.randn([4, 3, 3, 3]), torch.randn([4])
    case("conv_stride_groups", {"op": "torch.nn.functional.conv2d", "stride": 2, "padding": 1, "groups": 2, "bias": True},
         {"x": x, "w": w, "b": b},
         lambda x, w, b: torch.nn.functional.conv2d(x, w, b, stride=2, padding=1, groups=2),
         {"x": "dx", "w": "dw", "b": "db"})
    next_seed()
    x, w = torch.randn([2, 4, 5, 6]), torch.randn([4, 3, 3, 3])
    case("conv_transpose", {"op": "torch.nn.functional.conv_transpose2d", "stride": 2, "padding": 0, "groups": 1,
                            "output_padding": 0, "bias": False},
         {"x": x, "w": w}, lambda x, w: torch.nn.functional.conv_transpose2d(x, w, stride=2, padding=0),
         {"x": "dx", "w": "dw"})

    # bias_act
    spec = bias_act.activation_funcs
    for name, xs, act, gain, clamp in [
        ("lrelu_clamp", [3, 5, 4, 6], "lrelu", None, 0.5 * math.sqrt(2)),
        ("linear_clamp", [3, 5, 4, 6], "linear", 1, 0.3),
        ("lrelu_2d", [4, 7], "lrelu", None, None),
    ]:
        next_seed()
        x = torch.randn(xs) * (3 if len(xs) == 4 else 1)
        b = torch.randn([xs[1]])
        params = {"op": "bias_act", "dim": 1, "act": act, "alpha": None, "gain": gain, "clamp": clamp,
                  "effective_alpha": float(spec[act].def_alpha),
                  "effective_gain": float(gain if gain is not None else spec[act].def_gain),
                  "effective_clamp": float(clamp if clamp is not None else -1)}

        def fn(x, b, act=act, gain=gain, clamp=clamp):
            return bias_act.bias_act(x, b, dim=1, act=act, alpha=None, gain=gain, clamp=clamp, impl="ref")
        case(name, params, {"x": x, "b": b}, fn, {"x": "dx", "b": "db"})

    # modulated_conv2d
    def modconv(name, xs, ws, styles_fn, noise_scale=None, **kw):
        next_seed()
        x, w, s = torch.randn(xs), torch.randn(ws), styles_fn([xs[0], xs[1]])
        inputs, grads = {"x": x, "weight": w, "styles": s}, {"x": "dx", "weight": "dw", "styles": "dstyles"}
        if noise_scale is not None:
            inputs["noise"] = torch.randn([xs[0], 1, xs[2], xs[3]]) * noise_scale
            grads["noise"] = "dnoise"
        if kw.get("up", 1) > 1:
            inputs["f"] = std_f()
        params = {"op": "modulated_conv2d", "demodulate": kw["demodulate"], "padding": kw["padding"],
                  "up": kw.get("up", 1), "down": 1, "fused_modconv": kw["fused_modconv"],
                  "flip_weight": kw["flip_weight"], "noise": "noise" in inputs,
                  "resample_filter": "setup_filter([1,3,3,1])" if "f" in inputs else None}

        def fn(x, weight, styles, noise=None, f=None):
            return networks.modulated_conv2d(x=x, weight=weight, styles=styles, noise=noise, resample_filter=f, **kw)
        case(name, params, inputs, fn, grads)

    demod = dict(demodulate=True, padding=1, flip_weight=True)
    modconv("modconv_demod", [2, 4, 6, 6], [5, 4, 3, 3], lambda s: torch.randn(s) + 1, fused_modconv=True, **demod)
    seed[0] -= 1  # the unfused case reuses modconv_demod's seed: the very same x, weight, styles and dy
    modconv("modconv_demod_unfused", [2, 4, 6, 6], [5, 4, 3, 3], lambda s: torch.randn(s) + 1, fused_modconv=False, **demod)
    for k in ["x", "weight", "styles", "dy"]:
        assert torch.equal(tensors[f"modconv_demod.{k}"], tensors[f"modconv_demod_unfused.{k}"])
    assert torch.allclose(tensors["modconv_demod.y"], tensors["modconv_demod_unfused.y"], atol=1e-5)
    modconv("modconv_torgb", [2, 4, 6, 6], [3, 4, 1, 1], lambda s: torch.randn(s) * 0.5,
            demodulate=False, padding=0, flip_weight=True, fused_modconv=True)
    modconv("modconv_up", [2, 4, 5, 5], [5, 4, 3, 3], lambda s: torch.randn(s) + 1,
            up=2, demodulate=True, padding=1, flip_weight=False, fused_modconv=True)
    modconv("modconv_noise", [2, 4, 6, 6], [5, 4, 3, 3], lambda s: torch.randn(s) + 1, noise_scale=0.3,
            fused_modconv=False, **demod)

    # minibatch stddev
    for name, xs, g in [("mbstd_g4", [8, 6, 4, 4], 4), ("mbstd_g2", [2, 5, 3, 3], 4)]:
        next_seed()
        layer = networks.MinibatchStdLayer(group_size=g, num_channels=1)
        case(name, {"op": "MinibatchStdLayer", "group_size": g, "num_channels": 1, "effective_group": min(g, xs[0])},
             {"x": torch.randn(xs)}, lambda x, layer=layer: layer(x), {"x": "dx"})

    next_seed()
    case("norm2", {"op": "normalize_2nd_moment", "dim": 1, "eps": 1e-8}, {"x": torch.randn([3, 7]) * 2},
         lambda x: networks.normalize_2nd_moment(x), {"x": "dx"})

    save("ops.safetensors", tensors, meta)


# ---------------------------------------------------------------------------------------------
# Perturbation shared by the layer, G and D fixtures.


def perturb(module, noise_strength=None):
    """Deterministic (caller seeds): every bias += 0.1*randn in *effective* units (a
    FullyConnectedLayer's bias is multiplied by bias_gain = lr_multiplier at run time, so its stored
    bias moves by 0.1*randn/bias_gain), every noise_strength set (a float, or a callable -> float)."""
    with torch.no_grad():
        for mod in module.modules():
            b = getattr(mod, "bias", None)
            if isinstance(b, torch.Tensor):
                gain = getattr(mod, "bias_gain", 1) if isinstance(mod, networks.FullyConnectedLayer) else 1
                b.add_(0.1 * torch.randn_like(b) / gain)
            if noise_strength is not None and isinstance(getattr(mod, "noise_strength", None), torch.Tensor):
                mod.noise_strength.fill_(noise_strength() if callable(noise_strength) else noise_strength)


def unit_rows(x, parts):
    out, i = [], 0
    for n in parts:
        out.append(torch.nn.functional.normalize(x[:, i:i + n], dim=-1))
        i += n
    return torch.cat(out, dim=1)


# ---------------------------------------------------------------------------------------------
# 2. layer.safetensors


def layer_fixture():
    tensors, meta = {}, {"torch": torch.__version__}
    configs = [
        ("layer", "", networks.SynthesisLayer,
         dict(in_channels=6, out_channels=5, w_dim=8, resolution=8, up=2, conv_clamp=256, structure=2, f_dim=12, f_dim2=0),
         [2, 6, 4, 4]),
        ("flat", "flat.", networks.SynthesisLayer,
         dict(in_channels=5, out_channels=5, w_dim=8, resolution=8, up=1, conv_clamp=0.25, structure=2, f_dim=12, f_dim2=0),
         [2, 5, 8, 8]),
        ("torgb", "torgb.", networks.ToRGBLayer,
         dict(in_channels=5, out_channels=3, w_dim=8, conv_clamp=256, structure=2, f_dim=12, f_dim2=0),
         [2, 5, 8, 8]),
    ]
    for i, (key, prefix, cls, kwargs, xs) in enumerate(configs):
        torch.manual_seed(1 + i)
        layer = cls(**kwargs)
        perturb(layer, noise_strength=0.3)
        layer.eval()
        x, w = torch.randn(xs), torch.randn([xs[0], kwargs["w_dim"]])
        fts = unit_rows(torch.randn([xs[0], kwargs["f_dim"]]), [kwargs["f_dim"]])
        for k, v in layer.state_dict().items():
            tensors[f"{prefix}param.{k}"] = v
        tensors.update({f"{prefix}x": x, f"{prefix}w": w, f"{prefix}fts": fts})
        with torch.no_grad():
            if cls is networks.ToRGBLayer:
                tensors[f"{prefix}y"] = layer(x, w, fts, fused_modconv=True)[0]
            else:
                for m in ["const", "none"]:
                    tensors[f"{prefix}y_{m}"] = layer(x, w, fts, noise_mode=m, fused_modconv=True)[0]
        meta[key] = json.dumps(kwargs)
    save("layer.safetensors", tensors, meta)


# ---------------------------------------------------------------------------------------------
# 3. Generators / 4. Discriminators


def g_kwargs(scale):
    if scale == 2:
        res, structure, f_dim, f_dim2, mlf = 32, 2, 16, 0, 16
    else:
        res, structure, f_dim, f_dim2, mlf = 8, 4, 12, 10, 22
    return dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=res, img_channels=3, m_layer_features=mlf, m_num_layers=0,
                mapping_kwargs={"num_layers": 2},
                synthesis_kwargs={"channel_base": 512, "channel_max": 32, "num_fp16_res": 0, "conv_clamp": 256,
                                  "architecture": "skip", "structure": structure, "f_dim": f_dim, "f_dim2": f_dim2,
                                  "change": 256})


def d_kwargs(scale):
    if scale == 2:
        res, structure, f_dim, f_dim2 = 32, 2, 16, 0
    else:
        res, structure, f_dim, f_dim2 = 16, 4, 12, 10
    return dict(c_dim=0, img_resolution=res, img_channels=3, architecture="resnet", channel_base=512, channel_max=32,
                num_fp16_res=0, conv_clamp=256, cmap_dim=None, use_norm=False, use_fts=True, block_kwargs={},
                mapping_kwargs={},
                epilogue_kwargs={"structure": structure, "mbstd_group_size": 4, "f_dim": f_dim, "f_dim2": f_dim2})


def fts_parts(structure, f_dim, f_dim2):
    return [f_dim, f_dim2] if structure == 4 else [f_dim]


def generator_fixture(scale):
    kwargs = g_kwargs(scale)
    sk = kwargs["synthesis_kwargs"]
    torch.manual_seed(20 + scale)
    G = networks.Generator(**json.loads(json.dumps(kwargs)))
    with torch.no_grad():
        perturb(G, noise_strength=lambda: (lambda v: math.copysign(max(abs(v), 0.05), v))(0.2 * torch.randn([]).item()))
        G.mapping.w_avg.copy_(0.5 * torch.randn_like(G.mapping.w_avg))
    G.eval()
    sd = G.state_dict()
    save(f"g_s{scale}.safetensors", dict(sd),
         {"init_kwargs": json.dumps(kwargs), "format": "mindreader-lafite-v1", "class": "Generator"})

    torch.manual_seed(30 + scale)
    parts = fts_parts(sk["structure"], sk["f_dim"], sk["f_dim2"])
    z0 = torch.zeros([3, kwargs["z_dim"]])
    z1 = torch.randn([3, kwargs["z_dim"]])
    fts = unit_rows(torch.randn([3, sum(parts)]), parts)
    io = {"z0": z0, "z1": z1, "fts": fts}
    calls = {"img_z0_psi1_const": ("z0", 1, "const"), "img_z1_psi1_none": ("z1", 1, "none"),
             "img_z1_psi07_const": ("z1", 0.7, "const"), "img_z0_psi07_none": ("z0", 0.7, "none")}
    meta = {"torch": torch.__version__, "num_ws": str(G.num_ws)}
    with torch.no_grad():
        for name, (zname, psi, mode) in calls.items():
            io[name] = G(io[zname], None, truncation_psi=psi, fts=fts, noise_mode=mode)
            meta[name] = json.dumps({"z": zname, "c": None, "truncation_psi": psi, "truncation_cutoff": None,
                                     "noise_mode": mode, "fts": "fts"})
        io["ws_z1_psi07"] = G.mapping(z1, None, truncation_psi=0.7)
        meta["ws_z1_psi07"] = json.dumps({"call": "G.mapping", "z": "z1", "c": None, "truncation_psi": 0.7})
    save(f"g_s{scale}_io.safetensors", io, meta)
    return G


def discriminator_fixture(scale):
    kwargs = d_kwargs(scale)
    ek = kwargs["epilogue_kwargs"]
    torch.manual_seed(40 + scale)
    ctor = json.loads(json.dumps(kwargs))
    ctor["epilogue_kwargs"] = dnnlib.EasyDict(ctor["epilogue_kwargs"])  # D.forward reads epilogue_kwargs.structure
    D = networks.Discriminator(**ctor)
    perturb(D)
    D.eval()
    save(f"d_s{scale}.safetensors", dict(D.state_dict()),
         {"init_kwargs": json.dumps(kwargs), "format": "mindreader-lafite-v1", "class": "Discriminator"})

    torch.manual_seed(50 + scale)
    R = kwargs["img_resolution"]
    parts = fts_parts(ek["structure"], ek["f_dim"], ek["f_dim2"])
    img = torch.randn([8, 3, R, R])
    fts = unit_rows(torch.randn([8, sum(parts)]), parts)
    io = {"img": img, "fts": fts}
    meta = {"torch": torch.__version__}
    with torch.no_grad():
        out = D(img, None, fts=fts)
        io["logits"], io["d_fts"] = out[0], out[1]
        if ek["structure"] == 4:
            io["d_fts2"] = out[2]
        meta["logits"] = json.dumps({"call": "D(img, None, fts=fts)", "use_norm": False})
        if scale == 2:
            D.use_norm = True
            out = D(img, None, fts=fts)
            io["logits_norm"], io["d_fts_norm"] = out[0], out[1]
            D.use_norm = False
            meta["logits_norm"] = json.dumps({"call": "D(img, None, fts=fts) with D.use_norm = True", "use_norm": True})
    save(f"d_s{scale}_io.safetensors", io, meta)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fork", default=os.environ.get("LAFITE_FORK", "/tmp/fork/StyleGAN2"),
                    help="the StyleGAN2 folder of a sklin93/mind-reader checkout (default: $LAFITE_FORK or /tmp/fork/StyleGAN2)")
    args = ap.parse_args()
    import_fork(args.fork)
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(OUT, exist_ok=True)
    ops_fixture()
    layer_fixture()
    for s in (2, 4):
        generator_fixture(s)
        discriminator_fixture(s)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT) if f.endswith(".safetensors"))
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
