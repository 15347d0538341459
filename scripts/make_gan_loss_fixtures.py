#!/usr/bin/env python3
"""Makes tests/fixtures/gan/: reference fixtures for the Lafite/Mind Reader GAN loss, computed on the
CPU with the reference code itself: `StyleGAN2Loss.accumulate_gradients` of the Lafite fork inside
sklin93/mind-reader (`StyleGAN2/training/loss.py`), on tiny networks built by the fork's own
constructors (`training/networks.py`) and a tiny Hugging Face CLIP (tests/fixtures/clip/tiny).

The fork is test input and is never copied into this repository; get it with

    git clone https://github.com/sklin93/mind-reader

and pass its StyleGAN2 folder (the one holding training/, torch_utils/, dnnlib/) with --fork, or set
LAFITE_FORK (default /tmp/fork/StyleGAN2). Then, from the repository root:

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install torch==2.5.1 safetensors==0.4.5 numpy==2.1.3 requests==2.32.3 \\
        transformers==4.46.3 torchvision==0.20.1
    .venv-fixtures/bin/python scripts/make_gan_loss_fixtures.py --fork mind-reader/StyleGAN2

(The pins are in scripts/requirements-fixtures.txt. loss.py imports torchvision.transforms, which
full_preprocess uses for its CLIP normalisation; it also imports OpenAI's `clip` package and a
`resnet` module from the authors' home folder: neither is used on the paths run here, so both are
stubbed by empty modules before the import.)

For each case (`s4_r32`: structure 4, 32 px; `s2_r16`: structure 2, 16 px) the loss object is built
without its __init__ (which downloads ViT-B/32); its attributes are set by hand, the CLIP image
encoder is the tiny HF CLIP's get_image_features, and full_preprocess runs with fix_size=32 (the tiny
CLIP's image size). Then accumulate_gradients runs the four phases the training loop runs, with its
gains: Gmain (1), Greg (4), Dmain (1), Dreg (16). Every random draw, every training_stats.report,
every contra_loss call, the generated images, the CLIP inputs/outputs, every D call, the gradients
and pl_mean are recorded (see tests/fixtures/gan/README.md for every tensor name). Everything runs in
float32 on the CPU; the fork's custom CUDA ops are never built (on CPU tensors they take their
reference paths).

The fork's generator has a fixed 512-wide text pre-processing in every synthesis layer (pre_1 / pre_11:
(f_dim+512)//2 -> 512), which is >90% of G, so the G checkpoint is several MB whatever the channel
counts. To keep the files bounded, gradients of tensors with more than --grad-full-max elements (only
the pre_1 / pre_11 weights) are stored strided (`grad_strided.<name>` = grad.flatten()[::stride]);
every other gradient is stored whole. `--net-dtype f16` rounds every network tensor to f16 before the
run (so the run uses exactly the stored values) and stores the networks as F16, halving the files.
"""
import argparse
import functools
import json
import os
import sys
import types

import torch
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "gan")
CLIP_DIR = os.path.join(ROOT, "tests", "fixtures", "clip", "tiny")

PHASES = [("Gmain", 1), ("Greg", 4), ("Dmain", 1), ("Dreg", 16)]
BATCH = 4
CLIP_SIZE = 32
HYPER = dict(temp=0.5, lam=0.0, itd=10.0, itc=10.0, iid=0.0, iic=0.0, mixing_prob=0.0)
LOSS_ATTRS = dict(r1_gamma=1.0, pl_batch_shrink=2, pl_decay=0.01, pl_weight=2)
CASES = [
    # name, structure, f_dim, f_dim2, resolution, seed
    ("s4_r32", 4, 24, 24, 32, 400),
    ("s2_r16", 2, 24, 0, 16, 200),
]


def import_fork(path):
    path = os.path.abspath(path)
    if not os.path.isdir(os.path.join(path, "training")) or not os.path.isdir(os.path.join(path, "torch_utils")):
        sys.exit(f"--fork {path}: expected the mind-reader StyleGAN2 folder (with training/, torch_utils/, dnnlib/)")
    # loss.py does `import clip` (OpenAI CLIP, only for clip.load in __init__, which is not run) and
    # `from resnet import *` from /home/sikun/vicreg (only for vec2_res / resloss, both off here).
    if "clip" not in sys.modules:
        clip = types.ModuleType("clip")

        def _load(*a, **k):
            raise RuntimeError("stub: OpenAI CLIP is not used by these fixtures")
        clip.load = _load
        sys.modules["clip"] = clip
    if "resnet" not in sys.modules:
        sys.modules["resnet"] = types.ModuleType("resnet")
    sys.path.insert(0, path)
    global dnnlib, networks, loss_mod, training_stats
    import dnnlib  # noqa: F401
    from training import networks
    from training import loss as loss_mod
    from torch_utils import training_stats


def f32(t):
    return t.detach().to(torch.float32).contiguous().clone()


# ---------------------------------------------------------------------------------------------
# Recording


class Recorder:
    def __init__(self):
        self.tensors = {}
        self.phase = None
        self.draws = {}        # phase -> [[fn, shape]]
        self.draw_args = {}    # phase -> [[fn, args]]
        self.draw_calls = {}   # phase -> [(fn, args, kwargs, result)] for the replay check
        self.contra = {}       # phase -> [[mat1 source, mat2 source]]
        self.reports = {}      # phase -> [report names in call order]
        self.d_calls = {}      # phase -> number of D calls
        self.active = False

    def put(self, name, t, phase=True):
        key = f"{self.phase}.{name}" if phase else name
        assert key not in self.tensors, f"duplicate tensor {key}"
        self.tensors[key] = f32(torch.as_tensor(t))
        return key

    def start(self, phase):
        self.phase = phase
        for d in (self.draws, self.draw_args, self.draw_calls, self.contra, self.reports):
            d[phase] = []
        self.d_calls[phase] = 0
        self.active = True

    def stop(self):
        self.active = False


REC = Recorder()


def describe_args(args, kwargs):
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.dim() == 0:
            out.append(a.item())  # e.g. randint's high = full_size - cut_size, a 0-d tensor
        elif isinstance(a, torch.Tensor):
            out.append({"like": list(a.shape)})
        elif isinstance(a, (tuple, list, torch.Size)):
            out.append(list(a))
        else:
            out.append(a if isinstance(a, (int, float, bool)) or a is None else str(a))
    for k, v in kwargs.items():
        if k in ("device", "dtype"):
            continue
        out.append({k: list(v) if isinstance(v, (tuple, list, torch.Size)) else str(v)})
    return out


def draw_wrapper(name, fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        if REC.active:
            k = len(REC.draws[REC.phase])
            REC.put(f"draw{k}", out)
            REC.draws[REC.phase].append([name, list(out.shape)])
            REC.draw_args[REC.phase].append([name, describe_args(args, kwargs)])
            REC.draw_calls[REC.phase].append((fn, args, kwargs, out.detach().clone()))
        return out
    return wrapped


RNG_FNS = ["randn", "randn_like", "randint", "rand", "rand_like", "randint_like", "randperm", "normal", "bernoulli",
           "multinomial"]


class Patches:
    """Monkeypatches torch's random functions and training_stats.report; undone on exit."""

    def __enter__(self):
        self.saved = [(torch, n, getattr(torch, n)) for n in RNG_FNS]
        for _, n, fn in self.saved:
            setattr(torch, n, draw_wrapper(n, fn))
        self.saved.append((training_stats, "report", training_stats.report))
        orig_report = training_stats.report

        def report(name, value):
            if REC.active:
                REC.put(name.replace("/", "."), value)
                REC.reports[REC.phase].append(name)
            return orig_report(name, value)
        training_stats.report = report
        assert loss_mod.training_stats is training_stats
        return self

    def __exit__(self, *exc):
        for mod, n, fn in self.saved:
            setattr(mod, n, fn)
        return False


def replay_check(phase, state_before, state_after):
    """Re-runs the recorded draws from the phase's starting RNG state: they must give the same values
    and leave the generator where the phase left it (so no draw went unrecorded)."""
    torch.set_rng_state(state_before)
    for fn, args, kwargs, out in REC.draw_calls[phase]:
        again = fn(*args, **kwargs)
        assert torch.equal(again, out), f"{phase}: replayed draw differs"
    assert torch.equal(torch.get_rng_state(), state_after), f"{phase}: a random draw went unrecorded"
    torch.set_rng_state(state_after)


# ---------------------------------------------------------------------------------------------
# Stubs around the reference


class Synthesis(torch.nn.Module):
    """G_synthesis for the loss: the fork's synthesis with noise_mode='const' (no random draws).
    A Module because misc.ddp_sync asserts isinstance(module, torch.nn.Module)."""

    def __init__(self, G):
        super().__init__()
        object.__setattr__(self, "G", G)  # not a submodule

    def forward(self, ws, fts=None):
        img = self.G.synthesis(ws, fts=fts, noise_mode="const")
        REC.put("ws", ws)
        REC.put("G_fts", fts)
        REC.put("gen_img", img)
        return img


class ClipImage:
    """clip_model for the loss: encode_image = the tiny HF CLIP's get_image_features."""

    def __init__(self, model):
        self.model = model

    def encode_image(self, x):
        REC.put("clip_input", x)
        f = self.model.get_image_features(pixel_values=x)
        REC.put("clip_fts", f)
        return f


def d_hook(module, args, kwargs, output):
    if not REC.active:
        return
    k = REC.d_calls[REC.phase]
    REC.d_calls[REC.phase] += 1
    REC.put(f"D{k}.fts", kwargs["fts"])
    REC.put(f"D{k}.logits", output[0])
    REC.put(f"D{k}.d_fts", output[1])
    if len(output) > 2:
        REC.put(f"D{k}.d_fts2", output[2])


def identify(phase, t, f_dim):
    """Names a contra_loss operand by matching it against the phase's recorded tensors."""
    t = t.detach()
    cands = {}
    T = REC.tensors
    if f"{phase}.G_fts" in T:
        g = T[f"{phase}.G_fts"]
        cands["cond1 (G_fts[:, :f_dim])"] = g[:, :f_dim]
        if g.shape[1] > f_dim:
            cands["cond2 (G_fts[:, f_dim:])"] = g[:, f_dim:]
    if f"{phase}.clip_fts" in T:
        c = T[f"{phase}.clip_fts"]
        cands["clip_fts/|clip_fts|"] = c / c.norm(dim=-1, keepdim=True)
    for k in range(REC.d_calls[phase]):
        for part in ("d_fts", "d_fts2"):
            if f"{phase}.D{k}.{part}" in T:
                cands[f"D{k}.{part}"] = T[f"{phase}.D{k}.{part}"]
    hits = [n for n, c in cands.items() if c.shape == t.shape and torch.allclose(c, t, atol=1e-6, rtol=1e-5)]
    assert len(hits) == 1, f"{phase}: contra operand matches {hits}"
    return hits[0]


def make_contra(loss, f_dim):
    cls_fn = type(loss).contra_loss

    def contra_loss(temp, mat1, mat2, lam):
        out = cls_fn(loss, temp, mat1, mat2, lam)
        k = len(REC.contra[REC.phase])
        REC.put(f"contra{k}", out)
        REC.put(f"contra{k}.mat1", mat1)
        REC.put(f"contra{k}.mat2", mat2)
        REC.contra[REC.phase].append([identify(REC.phase, mat1, f_dim), identify(REC.phase, mat2, f_dim)])
        return out
    return contra_loss


# ---------------------------------------------------------------------------------------------
# One case


def g_kwargs(structure, f_dim, f_dim2, res):
    return dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=res, img_channels=3, m_layer_features=f_dim + f_dim2,
                m_num_layers=0, mapping_kwargs={"num_layers": 2},
                synthesis_kwargs={"channel_base": 512, "channel_max": 32, "num_fp16_res": 0, "conv_clamp": 256,
                                  "architecture": "skip", "structure": structure, "f_dim": f_dim, "f_dim2": f_dim2,
                                  "change": 256})


def d_kwargs(structure, f_dim, f_dim2, res):
    return dict(c_dim=0, img_resolution=res, img_channels=3, architecture="resnet", channel_base=512, channel_max=32,
                num_fp16_res=0, conv_clamp=256, cmap_dim=None, use_norm=False, use_fts=True, block_kwargs={},
                mapping_kwargs={},
                epilogue_kwargs={"structure": structure, "mbstd_group_size": 4, "f_dim": f_dim, "f_dim2": f_dim2})


def run_case(name, structure, f_dim, f_dim2, res, seed, clip_model, args):
    global REC
    REC = Recorder()
    gk, dk = g_kwargs(structure, f_dim, f_dim2, res), d_kwargs(structure, f_dim, f_dim2, res)
    torch.manual_seed(seed)
    G = networks.Generator(**json.loads(json.dumps(gk)))
    torch.manual_seed(seed + 1)
    dctor = json.loads(json.dumps(dk))
    dctor["epilogue_kwargs"] = dnnlib.EasyDict(dctor["epilogue_kwargs"])  # D.forward reads .structure
    D = networks.Discriminator(**dctor)
    # As training_loop.py: .train().requires_grad_(False); a phase turns its module's grads on.
    G.train().requires_grad_(False)
    D.train().requires_grad_(False)
    if args.net_dtype == "f16":
        with torch.no_grad():
            for t in list(G.state_dict().values()) + list(D.state_dict().values()):
                if t.is_floating_point():
                    t.copy_(t.half().float())
    net_dtype = torch.float16 if args.net_dtype == "f16" else torch.float32
    nets = {}
    for prefix, mod in (("G", G), ("D", D)):
        for k, v in mod.state_dict().items():
            nets[f"{prefix}.{k}"] = v.detach().to(net_dtype).contiguous().clone()

    # Inputs.
    torch.manual_seed(seed + 2)
    N, R = BATCH, res
    real = torch.tanh(torch.randn([N, 3, R, R]))
    c1 = torch.randn([N, f_dim])
    c2 = torch.randn([N, f_dim2]) if structure == 4 else None
    img_fts = torch.nn.functional.normalize(torch.randn([N, clip_model.model.config.projection_dim]), dim=-1)
    gen_z = torch.zeros([N, G.z_dim])
    real_c = torch.zeros([N, 0])
    gen_c = torch.zeros([N, 0])
    fmri = torch.zeros([N, 1])  # dummy: fmri_vec/fmri_vec2 ignore it
    REC.put("real", real, phase=False)
    REC.put("c1", c1, phase=False)
    if c2 is not None:
        REC.put("c2", c2, phase=False)
    REC.put("img_fts", img_fts, phase=False)
    REC.put("gen_z", gen_z, phase=False)

    # The loss object, without __init__ (it downloads ViT-B/32). Loss is a plain object.
    StyleGAN2Loss = loss_mod.StyleGAN2Loss
    assert not issubclass(StyleGAN2Loss, torch.nn.Module)
    loss = object.__new__(StyleGAN2Loss)
    loss.device = torch.device("cpu")
    loss.G_mapping = G.mapping
    loss.G_synthesis = Synthesis(G)
    loss.G_mani = None
    loss.D = D
    loss.augment_pipe = None
    loss.style_mixing_prob = 0  # run_G then draws nothing
    for k, v in LOSS_ATTRS.items():
        setattr(loss, k, v)
    loss.pl_mean = torch.zeros([])
    loss.clip_model = clip_model
    loss.use_fmri = True
    loss.resloss = False
    loss.ires = 10
    loss.fmri_vec = lambda fmri: c1.clone()
    if structure == 4:
        loss.fmri_vec2 = lambda fmri: c2.clone()
    loss.vec2_res = False
    loss.structure = structure  # read only on the use_fmri=False path
    # fix_size=32 (the tiny CLIP's image size) instead of 224; otherwise the fork's own code.
    loss.full_preprocess = functools.partial(StyleGAN2Loss.full_preprocess, loss, fix_size=CLIP_SIZE)
    loss.contra_loss = make_contra(loss, f_dim)
    hook = D.register_forward_hook(d_hook, with_kwargs=True)

    torch.manual_seed(seed + 3)
    try:
        with Patches():
            for phase, gain in PHASES:
                module, other = (G, D) if phase.startswith("G") else (D, G)
                for p in list(G.parameters()) + list(D.parameters()):
                    p.grad = None
                module.requires_grad_(True)
                other.requires_grad_(False)
                REC.start(phase)
                state0 = torch.get_rng_state()
                loss.accumulate_gradients(
                    phase=phase, real_img=real, real_c=real_c, gen_z=gen_z, gen_c=gen_c, sync=True, gain=gain,
                    img_fts=img_fts, lam=HYPER["lam"], temp=HYPER["temp"], gather=False, d_use_fts=True,
                    itd=HYPER["itd"], itc=HYPER["itc"], iid=HYPER["iid"], iic=HYPER["iic"],
                    mixing_prob=HYPER["mixing_prob"], txt_fts=c1.clone(), fmri=fmri, structure=structure,
                    f_dim=f_dim, f_dim2=f_dim2)
                REC.stop()
                state1 = torch.get_rng_state()
                module.requires_grad_(False)
                replay_check(phase, state0, state1)
                for p in other.parameters():
                    assert p.grad is None, f"{phase}: the other module got a gradient"
                for p in clip_model.model.parameters():
                    assert p.grad is None
                for pname, p in module.named_parameters():
                    if p.grad is None:
                        continue
                    g = p.grad
                    if g.numel() > args.grad_full_max:
                        REC.put(f"grad_strided.{pname}", g.flatten()[::args.grad_stride])
                    else:
                        REC.put(f"grad.{pname}", g)
                REC.put("w_avg", G.mapping.w_avg)
                if phase == "Greg":
                    REC.put("pl_mean", loss.pl_mean)
    finally:
        hook.remove()

    # Sanity.
    for k, v in REC.tensors.items():
        assert torch.isfinite(v).all(), f"{name}: {k} has non-finite values"
    zero = [k for k, v in REC.tensors.items() if ".grad" in k and not v.any()]
    for phase, _ in PHASES:
        ng = sum(1 for k in REC.tensors if k.startswith(f"{phase}.grad"))
        assert ng > 0, f"{phase}: no gradients"

    config = dict(structure=structure, f_dim=f_dim, f_dim2=f_dim2, batch=N, resolution=R, clip_image_size=CLIP_SIZE,
                  temp=HYPER["temp"], lam=HYPER["lam"], itd=HYPER["itd"], itc=HYPER["itc"], iid=HYPER["iid"],
                  iic=HYPER["iic"], mixing_prob=HYPER["mixing_prob"], style_mixing_prob=0, noise_mode="const",
                  gather=False, d_use_fts=True, **LOSS_ATTRS,
                  gains={p: g for p, g in PHASES}, phase_order=[p for p, _ in PHASES],
                  grad_full_max=args.grad_full_max, grad_stride=args.grad_stride, net_dtype=args.net_dtype,
                  seeds={"G": seed, "D": seed + 1, "inputs": seed + 2, "phases": seed + 3})
    meta = {
        "config": json.dumps(config),
        "G.init_kwargs": json.dumps(gk),
        "D.init_kwargs": json.dumps(dk),
        "draws": json.dumps(REC.draws),
        "draw_args": json.dumps(REC.draw_args),
        "contra": json.dumps(REC.contra),
        "reports": json.dumps(REC.reports),
        "d_calls": json.dumps(REC.d_calls),
        "zero_grads": json.dumps(zero),
        "torch": torch.__version__,
        "format": "mindreader-gan-loss-v1",
    }
    tensors = dict(nets)
    for k, v in REC.tensors.items():
        assert k not in tensors
        tensors[k] = v
    path = os.path.join(args.out, f"{name}.safetensors")
    save_file(tensors, path, metadata=meta)
    print(f"wrote {os.path.relpath(path)}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")
    summary(name, REC, zero)
    return REC


def summary(name, rec, zero):
    print(f"\n== {name}")
    print(f"{'term':<32} {'shape':<10} {'mean':>14} {'values'}")
    for k, v in rec.tensors.items():
        if ".Loss." in k or k.endswith("pl_mean") or (".contra" in k and ".mat" not in k):
            vals = ", ".join(f"{x:.6g}" for x in v.flatten().tolist()[:4])
            print(f"{k:<32} {str(list(v.shape)):<10} {v.mean().item():>14.7g} [{vals}]")
    for phase, _ in PHASES:
        gs = {k: v for k, v in rec.tensors.items() if k.startswith(f"{phase}.grad")}
        tot = sum(v.square().sum().item() for v in gs.values()) ** 0.5
        print(f"{phase}: {len(gs)} gradient tensors, total norm {tot:.6g}; draws {rec.draws[phase]}; "
              f"contra {rec.contra[phase]}")
    print(f"all-zero gradients: {zero}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fork", default=os.environ.get("LAFITE_FORK", "/tmp/fork/StyleGAN2"),
                    help="the StyleGAN2 folder of a sklin93/mind-reader checkout (default: $LAFITE_FORK or /tmp/fork/StyleGAN2)")
    ap.add_argument("--grad-full-max", type=int, default=32768,
                    help="gradients with more elements are stored strided (default 32768: only pre_1/pre_11 weights)")
    ap.add_argument("--grad-stride", type=int, default=61, help="stride of the strided gradients (default 61)")
    ap.add_argument("--out", default=OUT, help="output folder (default tests/fixtures/gan)")
    ap.add_argument("--net-dtype", choices=["f32", "f16"], default="f32",
                    help="f16: round the networks to f16 before the run and store them as F16 (half the size)")
    args = ap.parse_args()
    import_fork(args.fork)
    from transformers import CLIPModel
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(args.out, exist_ok=True)
    model = CLIPModel.from_pretrained(CLIP_DIR, torch_dtype=torch.float32).float().eval().requires_grad_(False)
    assert model.config.vision_config.image_size == CLIP_SIZE
    clip_model = ClipImage(model)
    for case in CASES:
        run_case(*case, clip_model, args)


if __name__ == "__main__":
    main()
