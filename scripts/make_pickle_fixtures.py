#!/usr/bin/env python3
"""Makes tests/fixtures/pickle/: checkpoints written the way the authors' code writes them, for the
Rust reader of network pickles and .pth files (src/pickle/), with the tensors and outputs it must
reproduce.

Needs the Lafite fork inside sklin93/mind-reader as test input (never copied into this repository;
see scripts/make_lafite_fixtures.py for how to get it) and the pinned packages of
scripts/requirements-fixtures.txt:

    .venv-fixtures/bin/python scripts/make_pickle_fixtures.py --fork /tmp/fork/StyleGAN2

Outputs:
  snapshot.pkl                a network snapshot exactly as the fork's training_loop.py saves one
                              (545-584): pickle.dump of {training_set_kwargs, args, G, D, G_ema,
                              augment_pipe=None, fmri_vec, fmri_vec2}, each network
                              copy.deepcopy(m).eval().requires_grad_(False).cpu(); networks built
                              with construct_class_by_name from EasyDict kwargs as train.py does;
                              structure 4, G at 4 px and D at 8 px; the mappers in float64 as training_loop.py has them
  snapshot_tensors.json       every state_dict tensor of every network, keyed `G/<name>`: dtype,
                              shape and the FNV-1a 64 hash of its bytes (float64 for the mappers): the
                              reader must match bit for bit (hashes keep the fixture small)
  snapshot_io.safetensors     z, fts, G_ema's and G's images (noise_mode const), D's outputs on
                              G_ema's image upsampled to 8 px (`d_img`), and both mappers' outputs on `fmri`
                              (computed in float64; everything saved as float32)
  mapper.pth                  torch.save(mapper.state_dict()) as mind-reader's fmri_clip.py saves its
                              mapper (an FmriVecMapper, whose keys are fmri_clip_res's)
  mapper_wrapped.pth          torch.save({'model': state_dict, 'epoch': 7})
  mapper_legacy.pth           torch.save(state_dict, _use_new_zipfile_serialization=False)
  mapper_io.safetensors       that mapper's tensors, an fMRI batch and its output (float32)
"""
import argparse
import copy
import json
import os
import pickle
import sys

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "pickle")
VOXELS = 37  # odd on purpose: the stem's output length ⌊V/2⌋ fits both 36 and 37


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fork", default=os.environ.get("LAFITE_FORK", "/tmp/fork/StyleGAN2"))
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    import make_lafite_fixtures as lf
    lf.import_fork(args.fork)
    import dnnlib
    EasyDict = dnnlib.EasyDict
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)

    # -- the networks, constructed as train.py + training_loop.py construct them (small sizes) --
    # G at 4 px (one block: every synthesis layer's pre_1/pre_11 is 512 wide in the fork, ~1 MB each)
    # and D at 8 px (the fork's D needs one block above its 4-px epilogue); training shares one
    # resolution, but the pickling is the same at any size
    f_dim, f_dim2, res, d_res = 12, 10, 4, 8
    G_kwargs = EasyDict(class_name="training.networks.Generator", z_dim=16, w_dim=16,
                        m_layer_features=f_dim + f_dim2, m_num_layers=8, mapping_kwargs=EasyDict(),
                        synthesis_kwargs=EasyDict(structure=4))
    D_kwargs = EasyDict(class_name="training.networks.Discriminator", use_norm=False, use_fts=True,
                        block_kwargs=EasyDict(), mapping_kwargs=EasyDict(), epilogue_kwargs=EasyDict(structure=4))
    G_kwargs.synthesis_kwargs.channel_base = D_kwargs.channel_base = 512
    G_kwargs.synthesis_kwargs.channel_max = D_kwargs.channel_max = 32
    G_kwargs.mapping_kwargs.num_layers = 2
    G_kwargs.synthesis_kwargs.num_fp16_res = D_kwargs.num_fp16_res = 0
    G_kwargs.synthesis_kwargs.conv_clamp = D_kwargs.conv_clamp = 256
    G_kwargs.synthesis_kwargs.change = 256
    G_kwargs.synthesis_kwargs.f_dim = f_dim
    G_kwargs.synthesis_kwargs.f_dim2 = f_dim2
    D_kwargs.epilogue_kwargs.mbstd_group_size = 4
    D_kwargs.epilogue_kwargs.f_dim = f_dim
    D_kwargs.epilogue_kwargs.f_dim2 = f_dim2
    mapper_kwargs = EasyDict(class_name="training.networks.FmriVecMapper", fmri_len=VOXELS, f_dim=f_dim,
                             num_resnet_blocks=2, hidden_dim=8, fc_hdim=6)
    mapper2_kwargs = EasyDict(class_name="training.networks.FmriVecMapper", fmri_len=VOXELS, f_dim=f_dim2,
                              num_resnet_blocks=2, hidden_dim=8, fc_hdim=6)
    common_kwargs = dict(c_dim=0, img_resolution=res, img_channels=3)

    torch.manual_seed(7)
    G = dnnlib.util.construct_class_by_name(**G_kwargs, **common_kwargs).train().requires_grad_(False)
    D = dnnlib.util.construct_class_by_name(**D_kwargs, **dict(common_kwargs, img_resolution=d_res))
    D.train().requires_grad_(False)
    with torch.no_grad():
        lf.perturb(G, noise_strength=0.1)
        G.mapping.w_avg.copy_(0.5 * torch.randn_like(G.mapping.w_avg))
        lf.perturb(D)
    G_ema = copy.deepcopy(G).eval()
    with torch.no_grad():  # training moves G away from G_ema: the reader must keep them apart
        lf.perturb(G, noise_strength=0.3)
    fmri_vec = dnnlib.util.construct_class_by_name(**mapper_kwargs).train().requires_grad_(False)
    fmri_vec.to(torch.double)
    fmri_vec2 = dnnlib.util.construct_class_by_name(**mapper2_kwargs).train().requires_grad_(False)
    fmri_vec2.to(torch.double)

    # -- the snapshot, as training_loop.py 545-584 writes it --
    training_set_kwargs = dict(class_name="training.dataset.NsdClipDataset", path="/data/nsd_subj01.h5",
                               use_mapped=True, use_fmri=True, fmri_pad=15744, use_clip=True, threshold=1.5,
                               normalize_clip=True, use_labels=True, max_size=None, xflip=False, ratio=1.0,
                               resolution=res)
    loss_kwargs = EasyDict(class_name="training.loss.StyleGAN2Loss", r1_gamma=np.float64(0.0002 * res ** 2 / 16),
                           use_fmri=True, structure=4)
    snapshot_data = dict(training_set_kwargs=dict(training_set_kwargs))
    snapshot_data["args"] = dict(num_gpus=1, batch_size=16, batch_gpu=16, G_reg_interval=4, D_reg_interval=16,
                                 allow_tf32=False, f_dim=f_dim, f_dim2=f_dim2, d_use_norm=False, d_use_fts=True,
                                 mixing_prob=0.9, lam=0.0, temp=0.5, gather=False, itd=10.0, itc=10.0, iid=0.0,
                                 iic=0.0, loss_kwargs=loss_kwargs)
    nm_pairs = [("G", G), ("D", D), ("G_ema", G_ema), ("augment_pipe", None),
                ("fmri_vec", fmri_vec), ("fmri_vec2", fmri_vec2)]
    for name, module in nm_pairs:
        if module is not None:
            module = copy.deepcopy(module).eval().requires_grad_(False).cpu()
        snapshot_data[name] = module
        del module
    with open(os.path.join(OUT, "snapshot.pkl"), "wb") as f:
        pickle.dump(snapshot_data, f)

    # -- what the reader must reproduce --
    tensors = {}
    for name in ("G", "D", "G_ema", "fmri_vec", "fmri_vec2"):
        for k, v in snapshot_data[name].state_dict().items():
            v = v.detach().contiguous()
            tensors[f"{name}/{k}"] = dict(dtype=str(v.dtype).removeprefix("torch."), shape=list(v.shape),
                                          fnv1a64=fnv1a64(v.numpy().tobytes()))
    with open(os.path.join(OUT, "snapshot_tensors.json"), "w") as f:
        json.dump(tensors, f, indent=0)

    torch.manual_seed(8)
    z = torch.randn([3, 16])
    fts = lf.unit_rows(torch.randn([3, f_dim + f_dim2]), [f_dim, f_dim2])
    fmri = torch.randn([4, VOXELS]).double()  # float32 values, exact in float64
    io = {"z": z, "fts": fts, "fmri": fmri}
    with torch.no_grad():
        io["img_ema"] = snapshot_data["G_ema"](z, None, fts=fts, noise_mode="const")
        io["img_g"] = snapshot_data["G"](z, None, fts=fts, noise_mode="const")
        io["d_img"] = torch.nn.functional.interpolate(io["img_ema"], scale_factor=2, mode="nearest")
        out = snapshot_data["D"](io["d_img"], None, fts=fts)
        io["logits"], io["d_fts"], io["d_fts2"] = out[0], out[1], out[2]
        io["fmri_vec"] = snapshot_data["fmri_vec"](fmri)
        io["fmri_vec2"] = snapshot_data["fmri_vec2"](fmri)
    save_file({k: v.float().contiguous() for k, v in io.items()}, os.path.join(OUT, "snapshot_io.safetensors"),
              {"torch": torch.__version__, "calls": json.dumps({
                  "img_ema": "G_ema(z, None, fts=fts, noise_mode='const')", "img_g": "G(z, None, fts=fts, noise_mode='const')",
                  "logits": "D(d_img, None, fts=fts)[0], d_img = img_ema upsampled 2x (nearest)", "fmri_vec": "fmri_vec(fmri) computed in float64, saved as float32"})})

    # -- a mapper .pth as mind-reader's fmri_clip.py saves it: torch.save(model.state_dict()) --
    torch.manual_seed(9)
    m = dnnlib.util.construct_class_by_name(**mapper_kwargs)
    sd = m.state_dict()
    torch.save(sd, os.path.join(OUT, "mapper.pth"))
    torch.save({"model": sd, "epoch": 7}, os.path.join(OUT, "mapper_wrapped.pth"))
    torch.save(sd, os.path.join(OUT, "mapper_legacy.pth"), _use_new_zipfile_serialization=False)
    x = torch.randn([4, VOXELS])
    with torch.no_grad():
        y = m(x)
    mio = {f"sd/{k}": v.contiguous() for k, v in sd.items()}
    mio.update(fmri=x, out=y)
    save_file(mio, os.path.join(OUT, "mapper_io.safetensors"), {"torch": torch.__version__})

    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT}: {total} bytes")


if __name__ == "__main__":
    main()
