#!/usr/bin/env python3
"""PyTorch timings of the same cases as `mindreader bench` (same shapes, dtypes, CUDA events,
warm-up, median of many runs), one JSON object per line. PyTorch here is the baseline: cuBLAS,
cuDNN and its fused kernels. Run on the GPU machine: python3 benches/torch_reference.py --json F
"""
import argparse, json, os, statistics, sys
import torch

ARGS = None

def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2], times[0]

def mapper_param_sizes():
    v = [64 * 4, 64]
    for _ in range(4):
        v += [64 * 64 * 3, 64, 64 * 64 * 3, 64, 64 * 64, 64]
    return v + [512 * 64, 512, 128 * 7872, 128, 128, 1]

def cases(dev):
    g = torch.Generator(device="cpu").manual_seed(0)
    r = lambda *s, dt=torch.float32: torch.randn(*s, generator=g).to(dev, dt)
    out = []
    for dt, tag in [(torch.float32, "f32"), (torch.bfloat16, "bf16")]:
        a, b = r(4096, 4096, dt=dt), r(4096, 4096, dt=dt)
        out.append((f"matmul {tag} 4096x4096x4096", lambda a=a, b=b: a @ b))
    # f32 tensors on the tensor cores, as mindreader's --precision: tf32 is allow_tf32 for the
    # call; bf16 is autocast (its casts included, as mindreader rounds inside the kernel), read
    # back in f32. Aᵀ·B is a weight gradient's layout.
    a32, b32 = r(4096, 4096), r(4096, 4096)
    def tf32(fn):
        def run():
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            try:
                return fn()
            finally:
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        return run
    def autocast(fn):
        def run():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return fn().float()
        return run
    for prec, wrap in [("tf32", tf32), ("bf16", autocast)]:
        out.append((f"matmul f32 --precision {prec} A·B 4096x4096x4096", wrap(lambda: a32 @ b32)))
        out.append((f"matmul f32 --precision {prec} A·B register-staged 4096x4096x4096", wrap(lambda: a32 @ b32)))
        out.append((f"matmul f32 --precision {prec} Aᵀ·B 4096x4096x4096", wrap(lambda: a32.t() @ b32)))
    x, w = r(128, 64, 7872), r(64, 64, 3)
    out.append(("conv1d k3 [128,64,7872]", lambda: torch.nn.functional.conv1d(x, w, padding=1)))
    out.append(("conv1d k3 --precision tf32 [128,64,7872]", tf32(lambda: torch.nn.functional.conv1d(x, w, padding=1))))
    out.append(("conv1d k3 --precision bf16 [128,64,7872]", autocast(lambda: torch.nn.functional.conv1d(x, w, padding=1))))
    bc = r(64)
    for kind in ["fused", "separate"]:  # one composition in PyTorch eager either way
        out.append((f"conv1d k3 +bias+residual+relu {kind} [128,64,7872]",
                    lambda: torch.relu(torch.nn.functional.conv1d(x, w, bc, padding=1) + x)))
    xs, ws = r(128, 1, 15744), r(64, 1, 4)
    out.append(("conv1d stem k4s2 [128,1,15744]", lambda: torch.nn.functional.conv1d(xs, ws, stride=2, padding=1)))
    for rows, cols in [(4096, 4096), (128 * 12 * 50, 50)]:
        t = r(rows, cols)
        out.append((f"softmax {rows}x{cols}", lambda t=t: torch.softmax(t, -1)))
    xl, gl, bl = r(256 * 50, 768), r(768), r(768)
    out.append(("layer_norm 12800x768", lambda: torch.nn.functional.layer_norm(xl, (768,), gl, bl, 1e-5)))
    rl = r(256 * 50, 768)
    out.append(("add+layer_norm 12800x768", lambda: torch.nn.functional.layer_norm(xl + rl, (768,), gl, bl, 1e-5)))
    sizes = mapper_param_sizes() * 2
    params = [torch.nn.Parameter(r(n)) for n in sizes]
    for p in params:
        p.grad = r(p.numel())
    opt = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5, fused=True)
    out.append((f"adam {len(sizes)} tensors {sum(sizes)} params", opt.step))
    # The mapper's default loss as PyTorch composes it (Mind Reader's weights), forward + backward.
    xp, tp = r(128, 512).requires_grad_(), r(128, 512)
    ones128 = torch.ones(128, device=dev)
    def mse_cos_contrastive():
        with torch.enable_grad():
            F_ = torch.nn.functional
            mse_cos = 0.4 * F_.mse_loss(xp, tp) + 0.6 * F_.cosine_embedding_loss(xp, tp, ones128)
            s = F_.cosine_similarity(xp.unsqueeze(1), tp.unsqueeze(0), dim=-1) / 0.5
            lab = torch.arange(128, device=dev)
            contra = 0.5 * F_.cross_entropy(s, lab) + 0.5 * F_.cross_entropy(s.t(), lab)
            loss = 0.5 * mse_cos + 0.5 * contra
            return torch.autograd.grad(loss, xp)[0]
    out.append(("mse_cos_contrastive fwd+bwd B=128 D=512", mse_cos_contrastive))
    out.append(("mapper train step f32 B=128 V=15744", mapper_step(dev, r)))
    out.append(("mapper train step f32 --precision tf32 B=128 V=15744", tf32(mapper_step(dev, r))))
    out.append(("mapper train step f32 --precision bf16 B=128 V=15744", mapper_step(dev, r, autocast=True)))
    # mindreader's step replayed from a CUDA graph, against the same PyTorch step (eager, and
    # torch.compile, whose timing below is of the compiled step).
    out += [(name + " CUDA graph", f) for name, f in out if name.startswith("mapper train step")]
    out += clip_cases(dev, r)
    out += lafite_cases(dev, r)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for dt, tags in [(torch.float32, [""]), (torch.bfloat16, [" bf16 simt", " bf16 tensorcore"])]:
        q, k, v = r(256, 12, 50, 64, dt=dt), r(256, 12, 50, 64, dt=dt), r(256, 12, 50, 64, dt=dt)
        for tag in tags:
            out.append((f"attention{tag} [256,12,50,64]", lambda q=q, k=k, v=v: sdpa(q, k, v)))
    # f32 tensors under autocast: SDPA casts q, k, v to bf16 (mindreader's --precision bf16).
    qa, ka, va = r(256, 12, 50, 64), r(256, 12, 50, 64), r(256, 12, 50, 64)
    def sdpa_autocast():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return sdpa(qa, ka, va).float()
    out.append(("attention f32 --precision bf16 [256,12,50,64]", sdpa_autocast))
    # CLIP's MLP fc1 in bf16: linear + bias, then quick_gelu (x·σ(1.702x)), as mindreader fuses it.
    xl16, wl16, bl16 = r(256 * 50, 768, dt=torch.bfloat16), r(3072, 768, dt=torch.bfloat16), r(3072, dt=torch.bfloat16)
    def fc1():
        p = torch.nn.functional.linear(xl16, wl16, bl16)
        return p * torch.sigmoid(1.702 * p)
    for variant in ["simt", "tensorcore"]:
        out.append((f"linear bf16 {variant} [12800x768]·[3072x768]ᵀ+b quick_gelu", fc1))
    # Forward + backward of SDPA (autograd), the baseline of both of mindreader's backward variants.
    qg, kg, vg, g = [r(64, 12, 50, 64).requires_grad_() for _ in range(3)] + [r(64, 12, 50, 64)]
    def fwd_bwd():
        with torch.enable_grad():
            o = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg)
            return torch.autograd.grad(o, (qg, kg, vg), g)
    for variant in ["composed", "fused"]:
        out.append((f"attention fwd+bwd {variant} [64,12,50,64]", fwd_bwd))
    return out

def clip_cases(dev, r):
    """Hugging Face CLIP ViT-B/32 (default config, random weights), eager with SDPA attention
    where this transformers has it, and torch.compile of it: f32 at batch 64 and bf16 at batch
    256, the shapes of mindreader's `clip vit-b/32 … f32 B=64` and `… bf16 B=256` cases."""
    try:
        from transformers import CLIPConfig, CLIPModel
    except ImportError as e:
        print(f"skipping the CLIP cases: {e}")
        return []
    out = []
    for dt, tag, batch in [(torch.float32, "f32", 64), (torch.bfloat16, "bf16", 256)]:
        try:
            model = CLIPModel._from_config(CLIPConfig(), attn_implementation="sdpa")
        except Exception as e:  # older transformers: no SDPA for CLIP
            print(f"CLIP without SDPA: {e}")
            model = CLIPModel(CLIPConfig())
        model = model.to(dev, dt).eval()
        px = r(batch, 3, 224, 224, dt=dt)
        ids = torch.randint(0, 49000, (batch, 77), device=dev)
        ids[:, -1] = 49407
        img = lambda model=model, px=px: model.get_image_features(pixel_values=px)
        txt = lambda model=model, ids=ids: model.get_text_features(input_ids=ids)
        out += [(f"clip vit-b/32 image encode {tag} B={batch}", img), (f"clip vit-b/32 text encode {tag} B={batch}", txt)]
        try:
            out += [(f"clip vit-b/32 image encode {tag} B={batch} (torch.compile)", torch.compile(img)),
                    (f"clip vit-b/32 text encode {tag} B={batch} (torch.compile)", torch.compile(txt))]
        except Exception as e:  # torch.compile needs a working Triton
            print(f"skipping torch.compile: {e}")
    return out

def modconv(x, w, s):
    """StyleGAN2's fused modulated convolution: per-sample weights w·s, demodulated, as one
    grouped conv (the reference's fused_modconv path, written from its math)."""
    n, cin = s.shape
    ws = w.unsqueeze(0) * s.view(n, 1, cin, 1, 1)
    ws = ws * (ws.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    y = torch.nn.functional.conv2d(x.reshape(1, -1, *x.shape[2:]), ws.reshape(-1, cin, *w.shape[2:]), padding=w.shape[-1] // 2, groups=n)
    return y.reshape(n, -1, *y.shape[2:])

def lafite_cases(dev, r):
    """mindreader's Lafite cases: the modulated conv at the 256-px generator's b256.conv1 (batch 16),
    forward and forward + backward, and the mind-reader fork's own Generator and Discriminator at
    256 px (structure 4) when its StyleGAN2 folder is given (--fork or $LAFITE_FORK; the bundle
    carries it as gpu-bundle/StyleGAN2 when it was built with LAFITE_FORK set). Prints whether the
    fork's custom CUDA ops (bias_act, upfirdn2d) compiled here; without them it runs its reference
    PyTorch ops."""
    out = []
    x, w, s, dy = r(16, 128, 256, 256), r(128, 128, 3, 3), r(16, 128) * 0.3 + 1, r(16, 128, 256, 256)
    out.append(("modconv fwd b256.conv1 [16,128,256,256]", lambda: modconv(x, w, s)))
    xg, wg, sg = [t.clone().requires_grad_() for t in (x, w, s)]
    def fwd_bwd():
        with torch.enable_grad():
            return torch.autograd.grad(modconv(xg, wg, sg), (xg, wg, sg), dy)
    out.append(("modconv fwd+bwd b256.conv1 [16,128,256,256]", fwd_bwd))
    bg, noise, strength = r(128).requires_grad_(), r(16, 1, 256, 256), torch.full((), 0.1, device=dev).requires_grad_()
    def layer_fwd_bwd():  # the synthesis layer's tail in PyTorch eager: + noise·strength, bias, lrelu·√2, clamp 256
        with torch.enable_grad():
            y = modconv(xg, wg, sg) + noise * strength
            y = (torch.nn.functional.leaky_relu(y + bg.view(1, -1, 1, 1), 0.2) * 2 ** 0.5).clamp(-256, 256)
            return torch.autograd.grad(y, (xg, wg, sg, bg, strength), dy)
    for kind in ["fused", "separate"]:  # one composition in PyTorch eager either way
        out.append((f"synthesis layer fwd+bwd {kind} b256.conv1 [16,128,256,256]", layer_fwd_bwd))
    fork = ARGS.fork or os.environ.get("LAFITE_FORK") or os.path.join(os.path.dirname(__file__), "..", "gpu-bundle", "StyleGAN2")
    if not os.path.isdir(os.path.join(fork, "training")):
        print(f"skipping the Lafite networks: no mind-reader StyleGAN2 folder at {fork}")
        return out
    sys.path.insert(0, fork)
    try:
        import dnnlib
        from training import networks
        from torch_utils.ops import bias_act, upfirdn2d
        built = bias_act._init() and upfirdn2d._init()
    except Exception as e:
        print(f"skipping the Lafite networks: {type(e).__name__}: {e}")
        return out
    print(f"the fork's custom CUDA ops (bias_act, upfirdn2d) {'compiled' if built else 'did NOT compile: its reference PyTorch ops run'}")
    syn = dict(structure=4, channel_base=32768, channel_max=512, num_fp16_res=0, conv_clamp=256, change=256, f_dim=512, f_dim2=512)
    G = networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3, m_layer_features=1024,
                           m_num_layers=8, mapping_kwargs={"num_layers": 8}, synthesis_kwargs=syn).to(dev).eval()
    D = networks.Discriminator(c_dim=0, img_resolution=256, img_channels=3, channel_base=32768, channel_max=512, num_fp16_res=0,
                               conv_clamp=256, use_norm=False, use_fts=True, block_kwargs={}, mapping_kwargs={},
                               epilogue_kwargs=dnnlib.EasyDict(structure=4, mbstd_group_size=4, f_dim=512, f_dim2=512)).to(dev).eval()
    z, fts, img = r(16, 512), r(16, 1024), r(16, 3, 256, 256)
    out.append(("lafite G forward 256px B=16", lambda: G(z, None, fts=fts, noise_mode="const")))
    out.append(("lafite D forward 256px B=16", lambda: D(img, None, fts=fts)))

    # One G+D step as `mindreader bench`'s "lafite G+D step" case: Gmain (softplus + the two itd
    # contrastive terms, no CLIP), Dmain, and R1 by the reference's double backward (loss.py).
    def contra(a, b, temp=0.5):
        sim = torch.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1) / temp
        return torch.log(torch.diagonal(torch.softmax(sim, dim=0)) * temp)
    c1, c2 = [torch.nn.functional.normalize(r(16, 512), dim=-1) for _ in range(2)]
    cond, z0, real = torch.cat([c1, c2], 1), torch.zeros(16, 512, device=dev), torch.tanh(r(16, 3, 256, 256))
    gamma, sp = 0.0002 * 256 * 256 / 16, torch.nn.functional.softplus
    gp, dp = list(G.parameters()), list(D.parameters())
    def gd_step():
        for p in gp + dp:
            p.requires_grad_(True)
        img = G(z0, None, fts=cond, noise_mode="const")
        logits, d1, d2 = D(img, None, fts=cond)
        loss = sp(-logits).mean() - 5 * contra(d1, c1).mean() - 5 * contra(d2, c2).mean()
        gg = torch.autograd.grad(loss, gp)
        with torch.no_grad():
            fake = G(z0, None, fts=cond, noise_mode="const")
        lf = D(fake, None, fts=cond)[0]
        lr, e1, e2 = D(real, None, fts=cond)
        loss_d = sp(lf).mean() + sp(-lr).mean() - 5 * contra(e1, c1).mean() - 5 * contra(e2, c2).mean()
        torch.autograd.grad(loss_d, dp)
        x = real.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x, None, fts=cond)[0].sum(), x, create_graph=True)
        pen = g.square().sum([1, 2, 3]).mean() * (gamma / 2) * 16
        torch.autograd.grad(pen, dp)
        return gg[-1]
    out.append(("lafite G+D step 256px B=16 (R1)", gd_step))
    return out

class ResBlock(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        F = torch.nn
        self.net = F.Sequential(F.Conv1d(c, c, 3, padding=1), F.ReLU(), F.Conv1d(c, c, 3, padding=1), F.ReLU(), F.Conv1d(c, c, 1))
    def forward(self, x):
        return torch.relu(self.net(x) + x)

def mapper_step(dev, r, voxels=15744, batch=128, autocast=False):
    F = torch.nn
    enc = F.Sequential(F.Sequential(F.Conv1d(1, 64, 4, stride=2, padding=1), F.ReLU()), *[ResBlock(64) for _ in range(4)], F.Conv1d(64, 512, 1)).to(dev)
    fc = F.Sequential(F.ReLU(), F.Conv1d(voxels // 2, 128, 1), F.ReLU(), F.Conv1d(128, 1, 1)).to(dev)
    params = list(enc.parameters()) + list(fc.parameters())
    opt = torch.optim.Adam(params, lr=2e-4, weight_decay=1e-5)
    x, t = r(batch, voxels), r(batch, 512)
    ones = torch.ones(batch, device=dev)
    def step():
        with torch.enable_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            y = fc(enc(x.view(-1, 1, voxels)).transpose(1, 2))[:, 0, :].float()
            loss = 0.4 * torch.nn.functional.mse_loss(y, t) + 0.6 * torch.nn.functional.cosine_embedding_loss(y, t, ones)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return step

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--fork", help="the mind-reader repository's StyleGAN2 folder (for the Lafite networks)")
    global ARGS
    args = ARGS = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # f32 means f32, as in mindreader
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    lines = []
    with torch.no_grad():
        for case, fn in cases(dev):
            try:
                med, mn = timed(fn, args.warmup, args.iters)
            except Exception as e:  # e.g. torch.compile without a working Triton fails at its first call
                print(f"{case:45s} skipped: {type(e).__name__}: {str(e)[:200]}")
                continue
            lines.append({"case": case, "device": "torch", "device_name": name, "median_ms": med, "min_ms": mn})
            print(f"{case:45s} {med:9.4f} ms")
    if args.json:
        with open(args.json, "w") as f:
            for l in lines:
                f.write(json.dumps(l) + "\n")

if __name__ == "__main__":
    main()
