#!/usr/bin/env python3
"""Makes tests/fixtures/mapper/*.safetensors: PyTorch reference outputs for the Mind Reader mapper
and its losses. The modules below follow the reference's `fmri_clip_res` (its layers are listed in
the module doc of src/models/mapper.rs) with the same nesting, so their state_dict names are the
reference's.

    python3 -m venv .venv-fixtures && .venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt
    .venv-fixtures/bin/python scripts/make_fixtures.py
"""
import os
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "mapper")


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(c, c, 3, padding=1), nn.ReLU(), nn.Conv1d(c, c, 3, padding=1), nn.ReLU(), nn.Conv1d(c, c, 1))

    def forward(self, x):
        return F.relu(self.net(x) + x)


class Mapper(nn.Module):
    def __init__(self, voxels, hidden, fc_hidden, out_dim, blocks):
        super().__init__()
        layers = [nn.Sequential(nn.Conv1d(1, hidden, 4, stride=2, padding=1), nn.ReLU())]
        layers += [ResBlock(hidden) for _ in range(blocks)]
        layers.append(nn.Conv1d(hidden, out_dim, 1))
        self.encoder = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.ReLU(), nn.Conv1d(voxels // 2, fc_hidden, 1), nn.ReLU(), nn.Conv1d(fc_hidden, 1, 1))
        self.voxels = voxels

    def forward(self, fmri):
        x = self.encoder(fmri.view(-1, 1, self.voxels))
        return self.fc(x.transpose(1, 2))[:, 0, :]


def mse_cos(pred, target, w):
    ones = torch.ones(len(target))
    return (1 - w) * F.mse_loss(pred, target) + w * F.cosine_embedding_loss(pred, target, ones)


def contrastive(pred, target, tau, lam):
    sim = torch.cosine_similarity(pred.unsqueeze(1), target.unsqueeze(0), dim=-1) / tau
    rows = torch.diagonal(F.log_softmax(sim, dim=1))
    cols = torch.diagonal(F.log_softmax(sim, dim=0))
    return (-(lam * rows + (1 - lam) * cols)).mean()


def mapper_fixture(name, voxels, hidden, fc_hidden, out_dim, blocks, batch, seed):
    torch.manual_seed(seed)
    m = Mapper(voxels, hidden, fc_hidden, out_dim, blocks)
    x = torch.randn(batch, voxels)
    with torch.no_grad():
        y = m(x)
    tensors = {f"param.{k}": v.contiguous() for k, v in m.state_dict().items()}
    tensors["input"] = x
    tensors["output"] = y
    meta = {"voxels": str(voxels), "hidden": str(hidden), "fc_hidden": str(fc_hidden), "out_dim": str(out_dim), "res_blocks": str(blocks)}
    save_file(tensors, os.path.join(OUT, f"{name}.safetensors"), metadata=meta)


def loss_fixture(seed):
    torch.manual_seed(seed)
    pred = torch.randn(12, 20, requires_grad=True)
    target = F.normalize(torch.randn(12, 20), dim=-1)
    out = {"pred": pred.detach().clone(), "target": target}
    for name, fn in [
        ("mse", lambda p: F.mse_loss(p, target)),
        ("cosine", lambda p: mse_cos(p, target, 1.0)),
        ("mse_cos", lambda p: mse_cos(p, target, 0.6)),
        ("contrastive", lambda p: contrastive(p, target, 0.5, 0.5)),
        ("mse_cos_contrastive", lambda p: 0.5 * mse_cos(p, target, 0.6) + 0.5 * contrastive(p, target, 0.5, 0.5)),
    ]:
        p = pred.detach().clone().requires_grad_(True)
        loss = fn(p)
        loss.backward()
        out[f"{name}.loss"] = loss.detach().reshape(1)
        out[f"{name}.grad"] = p.grad
    save_file(out, os.path.join(OUT, "losses.safetensors"), metadata={"torch": torch.__version__})


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.set_default_dtype(torch.float32)
    mapper_fixture("mapper_small", voxels=50, hidden=8, fc_hidden=6, out_dim=16, blocks=2, batch=3, seed=1)
    mapper_fixture("mapper_mind_reader_v1000", voxels=1000, hidden=64, fc_hidden=128, out_dim=512, blocks=4, batch=2, seed=2)
    loss_fixture(3)
    print("wrote", sorted(os.listdir(OUT)))
