"""The lung segmenter: a small U-Net trained on human lung masks, which finds the lung box and mask
that every input is cut and equalised by."""
from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..films import read_film
from ..model import LungNet
from ..preprocess import lung_input, resize
from .augment import affine, warp
from .data import SEED, seed_everything

LUNG_MASKS_NOTE = "human lung masks of COVID-19 films (hannover-mhh, ieee8023), v7labs, CC BY 4.0; split by film"


def load_lung_set(lungs: Path, data: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with open(lungs / "MANIFEST.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    xs, ys, names = [], [], []
    for r in rows:
        film = read_film(data / r["film"])
        mask = np.asarray(read_film(lungs / r["mask"]).pixels)
        xs.append(lung_input(film.pixels, size))
        ys.append((resize(mask, size, size) > 0.5).astype(np.float32))
        names.append(r["film"])
    return np.stack(xs), np.stack(ys), names


def dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inter = (pred * target).sum((1, 2, 3))
    return (2 * inter + 1) / (pred.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)


def lung_val_split(n: int) -> np.ndarray:
    """True for the lung-mask films (in the order of lungs/MANIFEST.csv) held out from segmenter training."""
    rng = random.Random(SEED)
    return np.array([rng.random() < 0.12 for _ in range(n)])


def train_lungs(lungs: Path, data: Path, work: Path, size: int, epochs: int = 14, batch: int = 16) -> tuple[LungNet, dict]:
    """The segmenter at `size` px (`work/lungnet_<size>.pt`, trained once), and its Dice on the held-out masks."""
    out = work / f"lungnet_{size}.pt"
    x, y, names = load_lung_set(lungs, data, size)
    val = lung_val_split(len(names))
    net = LungNet()
    if out.exists():
        net.load_state_dict(torch.load(out, weights_only=True))
    else:
        seed_everything()
        gen = torch.Generator().manual_seed(SEED)
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * math.ceil((~val).sum() / batch))
        xt, yt = torch.from_numpy(x[~val])[:, None], torch.from_numpy(y[~val])[:, None]
        for ep in tqdm(range(epochs), desc="lung segmenter", unit="epoch"):
            net.train()
            order = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                theta = affine(len(idx), 12, (0.8, 1.15), 0.1, gen)
                xb, yb = warp(xt[idx], theta), (warp(yt[idx], theta) > 0.5).float()
                gamma = torch.exp((torch.rand(len(idx), 1, 1, 1, generator=gen) * 2 - 1) * 0.4)
                xb = xb.clamp(0, 1) ** gamma
                logits = net(xb)
                loss = F.binary_cross_entropy_with_logits(logits, yb) + (1 - dice(torch.sigmoid(logits), yb)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        torch.save(net.state_dict(), out)
    net.eval()
    with torch.inference_mode():
        pv = (torch.sigmoid(net(torch.from_numpy(x[val])[:, None])) > 0.5).float()
        d = dice(pv, torch.from_numpy(y[val])[:, None]).numpy()
    report = {"n_train": int((~val).sum()), "n_val": int(val.sum()), "val_dice_mean": float(d.mean()),
              "val_dice_min": float(d.min()), "input_size": size, "epochs": epochs, "note": LUNG_MASKS_NOTE}
    return net, report
