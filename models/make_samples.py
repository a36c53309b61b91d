"""Create the committed Fashion-MNIST sample files (deterministic).

    python -m models.make_samples

models/data/fmnist_calib512.npz : 512 images from the train split (seeded random choice)
models/data/fmnist_eval2000.npz : 2000 images from the test split, 200 per class
models/data/fmnist_train2000.npz: 2000 other images from the train split, no labels (training inputs
                                  for the finetune example, disjoint from the calibration sample)
Keys: `input` uint8 (N,1,28,28), `labels` int64 (N,) (not in the train sample).
"""
from __future__ import annotations

import argparse

import numpy as np

from . import fmnist


def make_calib(x, y, n=512, seed=0):
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(x), size=n, replace=False))
    return x[idx], y[idx], idx


def make_eval(x, y, per_class=200, seed=1):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), size=per_class, replace=False)
                          for c in range(10)])
    idx = np.sort(idx)
    return x[idx], y[idx], idx


def make_train(n_total, exclude, n=2000, seed=2):
    rng = np.random.default_rng(seed)
    pool = np.setdiff1d(np.arange(n_total), exclude)
    return np.sort(rng.choice(pool, size=n, replace=False))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    fmnist.DATA_DIR.mkdir(parents=True, exist_ok=True)
    xtr, ytr = fmnist.load_train_split()
    xc, yc, ic = make_calib(xtr, ytr, 512, seed=args.seed)
    np.savez_compressed(fmnist.CALIB_FILE, input=xc.astype(np.uint8), labels=yc.astype(np.int64))
    it = make_train(len(xtr), ic, 2000, seed=args.seed + 2)
    np.savez_compressed(fmnist.DATA_DIR / "fmnist_train2000.npz", input=xtr[it].astype(np.uint8))
    xte, yte = fmnist.load_test_split()
    xe, ye, ie = make_eval(xte, yte, 200, seed=args.seed + 1)
    np.savez_compressed(fmnist.EVAL_FILE, input=xe.astype(np.uint8), labels=ye.astype(np.int64))
    for p, (xx, yy) in ((fmnist.CALIB_FILE, (xc, yc)), (fmnist.EVAL_FILE, (xe, ye))):
        print(f"{p}: input {xx.shape} {xx.dtype}, labels {yy.shape} {yy.dtype}, "
              f"per class {np.bincount(yy, minlength=10).tolist()}")


if __name__ == "__main__":
    main()
