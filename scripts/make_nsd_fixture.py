#!/usr/bin/env python3
"""Makes tests/fixtures/nsd/: a miniature Natural Scenes Dataset tree in NSD's real file formats,
and expected.h5, the prepared values computed independently here with numpy.

    python3 -m venv .venv-nsd && .venv-nsd/bin/pip install -r scripts/requirements-nsd-fixture.txt
    .venv-nsd/bin/python scripts/make_nsd_fixture.py

The tree (paths as in NSD):
  nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session0{1,2,3}.hdf5
      `betas` int16, h5py shape [8 trials, Z=4, Y=5, X=6] (MATLAB wrote [X, Y, Z, trials]; h5py
      shows the axes reversed), values = percent signal change × 300
  nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz   int16 (X=6, Y=5, Z=4): -1 / 0 / 1
  nsddata/experiments/nsd/nsd_expdesign.mat   masterordering [1, 24], subjectim [8, 12],
      sharedix [1, 4], stimpattern, basiccnt (all double, 1-based, MATLAB v5 compressed)
  nsddata/experiments/nsd/nsd_stim_info_merged.csv   nsdId → cocoId, cocoSplit (cropBox quoted)
  nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5   `imgBrick` uint8 [20, 17, 17, 3]
  coco/annotations/captions_{train,val}2017.json   COCO caption annotations

The volume is asymmetric (6 × 5 × 4) and so is the mask, so reading the mask in the wrong axis
order fails (shape) or picks different voxels (values).
"""
import csv
import json
import os

import h5py
import nibabel as nib
import numpy as np
import scipy.io

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "nsd")
X, Y, Z = 6, 5, 4
SESSIONS, PER_SESSION = 3, 8
N_BRICK, SIDE, PER_SUBJECT = 20, 17, 12
OUT_SIZE = 8

rng = np.random.default_rng(6)


def path(*parts):
    p = os.path.join(ROOT, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p


# --- the mask, in nibabel's (X, Y, Z) view ---------------------------------------------------
mask = np.full((X, Y, Z), -1, np.int16)
mask[1:5, 1:4, :3] = 0
roi = rng.random((X, Y, Z)) < 0.45
mask[roi & (mask == 0)] = 1
mask[0, 0, 3] = 1  # a lone corner voxel: only one axis order puts it first or last
img = nib.Nifti1Image(mask, np.diag([1.8, 1.8, 1.8, 1.0]))
nib.save(img, path("nsddata", "ppdata", "subj01", "func1pt8mm", "roi", "nsdgeneral.nii.gz"))
inside = np.argwhere(mask == 1)  # (x, y, z) rows in C order over (x, y, z)
# The prepared voxel order is C order over the betas' own axes (z, y, x): sort by (z, y, x).
order = np.lexsort((inside[:, 0], inside[:, 1], inside[:, 2]))
voxels = inside[order]
V = len(voxels)

# --- design ------------------------------------------------------------------------------------
subjectim = np.zeros((8, PER_SUBJECT))
for s in range(8):
    subjectim[s] = rng.permutation(N_BRICK)[:PER_SUBJECT] + 1  # 1-based 73k ids
sub1 = subjectim[0].astype(int) - 1  # 0-based ids of subject 1's images
shared0 = np.array([sub1[0], sub1[3], sub1[7], 19 if 19 not in sub1 else 18])  # one maybe unseen
sharedix = (np.unique(shared0) + 1).astype(float)[None, :]
masterordering = np.zeros((1, SESSIONS * PER_SESSION))
masterordering[0] = np.concatenate([rng.permutation(PER_SUBJECT)[:PER_SESSION] for _ in range(SESSIONS)]) + 1
scipy.io.savemat(
    path("nsddata", "experiments", "nsd", "nsd_expdesign.mat"),
    {
        "masterordering": masterordering,
        "subjectim": subjectim,
        "sharedix": sharedix,
        "stimpattern": rng.integers(0, 2, (SESSIONS, 2, PER_SESSION // 2)).astype(float),
        "basiccnt": np.ones((3, SESSIONS)),
    },
    do_compression=True,
)

# --- betas: a true (x, y, z) volume per trial, stored the way h5py shows NSD's files -----------
betas_xyz = []  # per session [trials, X, Y, Z] float (percent signal change × 300, int16)
for s in range(SESSIONS):
    b = np.round(rng.normal(50 * s, 300, (PER_SESSION, X, Y, Z))).astype(np.int16)
    if s == 1:
        b[:, voxels[0][0], voxels[0][1], voxels[0][2]] = 7  # constant within the session
    betas_xyz.append(b)
    with h5py.File(path("nsddata_betas", "ppdata", "subj01", "func1pt8mm", "betas_fithrf_GLMdenoise_RR", f"betas_session{s + 1:02d}.hdf5"), "w") as f:
        f.create_dataset("betas", data=b.transpose(0, 3, 2, 1), chunks=(1, Z, Y, X))

# --- stimuli -----------------------------------------------------------------------------------
brick = rng.integers(0, 256, (N_BRICK, SIDE, SIDE, 3), dtype=np.uint8)
with h5py.File(path("nsddata_stimuli", "stimuli", "nsd", "nsd_stimuli.hdf5"), "w") as f:
    f.create_dataset("imgBrick", data=brick, chunks=(1, SIDE, SIDE, 3))

# --- captions: stim info CSV (as pandas wrote NSD's) and COCO JSON -----------------------------
coco_id = 100000 + rng.permutation(900)[:N_BRICK] * 7
coco_split = np.where(np.arange(N_BRICK) % 3 == 0, "val2017", "train2017")
with open(path("nsddata", "experiments", "nsd", "nsd_stim_info_merged.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["", "cocoId", "cocoSplit", "cropBox", "loss", "nsdId", "flagged", "BOLD5000", "shared1000"] + [f"subject{i}" for i in range(1, 9)])
    for i in range(N_BRICK):
        w.writerow([i, coco_id[i], coco_split[i], "(0, 0, 0.1, 0.1)", 0.0, i, False, False, (i + 1) in sharedix] + [0] * 8)
captions = {i: [f"image {i} caption {k} for coco {coco_id[i]}" for k in range(5 + i % 2)] for i in range(N_BRICK)}
captions[2].append("a \"quoted\", comma’d caption")
ann_id = 1
anns = {"train2017": [], "val2017": []}
for i in rng.permutation(N_BRICK):
    for c in captions[i]:
        anns[coco_split[i]].append({"image_id": int(coco_id[i]), "id": int(1000 + rng.integers(0, 10**6) * 1000 + ann_id), "caption": c})
        ann_id += 1
for split, a in anns.items():
    rng.shuffle(a)
    with open(path("coco", "annotations", f"captions_{split}.json"), "w") as f:
        json.dump({"info": {"description": "fixture"}, "images": [], "annotations": a}, f)


# --- broken variants for the malformed-input tests (copied over the good files) ----------------
os.makedirs(os.path.join(ROOT, "broken"), exist_ok=True)
# The mask with nibabel's axes reversed, (Z, Y, X): what reading betas-order as NIfTI-order gives.
nib.save(nib.Nifti1Image(np.ascontiguousarray(mask.transpose(2, 1, 0)), np.eye(4)), path("broken", "nsdgeneral_transposed.nii.gz"))
# masterordering pointing past the subject's 12 images.
bad = masterordering.copy()
bad[0, 5] = PER_SUBJECT + 1
scipy.io.savemat(path("broken", "nsd_expdesign_out_of_range.mat"), {"masterordering": bad, "subjectim": subjectim, "sharedix": sharedix}, do_compression=True)
# train2017 captions without the first seen train image's.
seen = sorted(set(int(subjectim[0, int(k) - 1]) - 1 for k in masterordering[0]))
gone = next(i for i in seen if coco_split[i] == "train2017")
with open(path("broken", "captions_train2017_missing.json"), "w") as f:
    json.dump({"annotations": [a for a in anns["train2017"] if a["image_id"] != coco_id[gone]]}, f)
with open(path("broken", "missing_caption_coco_id.txt"), "w") as f:
    f.write(f"{coco_id[gone]}\n")

# --- the expected output, computed from the (x, y, z) arrays above -----------------------------
def area_weights(n, m):
    """[m, n]: output pixel j averages input [j n/m, (j+1) n/m) weighted by overlap."""
    w = np.zeros((m, n))
    for j in range(m):
        a, b = j * n / m, (j + 1) * n / m
        for i in range(n):
            w[j, i] = max(0.0, min(b, i + 1) - max(a, i))
        w[j] /= n / m
    return w


def resize(im, size):
    wy, wx = area_weights(im.shape[0], size), area_weights(im.shape[1], size)
    out = np.einsum("yi,ijc->yjc", wy, np.einsum("xj,ijc->ixc", wx, im.astype(np.float64)))
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def prepare(sessions, zscore, average, pad):
    rows, stim73k, sess = [], [], []
    for s in sessions:
        b = betas_xyz[s - 1].astype(np.float64) / 300.0
        x = b[:, voxels[:, 0], voxels[:, 1], voxels[:, 2]]  # [trials, V]
        if zscore:
            mu, sd = x.mean(0), x.std(0)
            x = np.where(sd > 0, (x - mu) / np.where(sd > 0, sd, 1), 0.0)
        for t in range(PER_SESSION):
            k = int(masterordering[0, (s - 1) * PER_SESSION + t]) - 1
            stim73k.append(int(subjectim[0, k]) - 1)
            rows.append(x[t])
            sess.append(s)
    ids = sorted(set(stim73k))
    index = {i: n for n, i in enumerate(ids)}
    trial_stim = np.array([index[i] for i in stim73k])
    rows, sess = np.array(rows), np.array(sess)
    if average:
        rows = np.array([rows[trial_stim == m].mean(0) for m in range(len(ids))])
        sess = np.array([sess[trial_stim == m][0] for m in range(len(ids))])
        trial_stim = np.arange(len(ids))
    fmri = np.pad(rows, ((0, 0), tuple(pad))).astype(np.float32)
    shared = set((sharedix[0].astype(int) - 1).tolist())
    split = np.array([1 if i in shared else 0 for i in ids], np.uint8)
    caps = [sorted(anns[coco_split[i]], key=lambda a: a["id"]) for i in ids]
    caps = [[a["caption"] for a in c if a["image_id"] == coco_id[i]] for c, i in zip(caps, ids)]
    width = max(len(c) for c in caps)
    caps = [c + [""] * (width - len(c)) for c in caps]
    images = np.stack([resize(brick[i], OUT_SIZE) for i in ids])
    return dict(fmri=fmri, trial_stimulus=trial_stim.astype(np.uint32), trial_session=sess.astype(np.uint32),
                stimulus_id=np.array(ids, np.uint32), split=split, images=images, captions=np.array(caps, dtype=object))


cases = {
    # prepare-nsd --size 8 --pad-multiple 16
    "default": prepare([1, 2, 3], True, False, [(16 - V % 16) % 16 // 2, (16 - V % 16) % 16 - (16 - V % 16) % 16 // 2]),
    # prepare-nsd --size 8 --sessions 1,3 --average-repeats --no-zscore --padding 2
    "average": prepare([1, 3], False, True, [2, 2]),
}
with h5py.File(os.path.join(ROOT, "expected.h5"), "w") as f:
    f.attrs["voxels_unpadded"] = V
    for name, c in cases.items():
        g = f.create_group(name)
        for k, v in c.items():
            if k == "captions":
                g.create_dataset(k, data=v.astype(str).astype(object), dtype=h5py.string_dtype())
            else:
                g.create_dataset(k, data=v)
print(f"wrote {ROOT}: {V} voxels in the mask, {len(cases['default']['stimulus_id'])} stimuli seen")
