"""The training loop of one network: balanced sampling, checkpoints, early stopping, inference on the
cache, and temperature scaling."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..model import CovidNet
from .augment import augment
from .cache import Cache, network_batch, to_batch
from .data import CLASSES, POSITIVE, seed_everything
from .penalties import LungAttention, SourceAdversary
from .recipe import Recipe


def sample_weights(cache: Cache, idx: np.ndarray) -> torch.Tensor:
    """Balanced over (source, label) with a square-root damping, then equal total weight per decision class."""
    keys = [(cache.records[i].source, cache.records[i].label) for i in idx]
    counts: dict[tuple[str, str], int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    w = np.array([counts[k] ** -0.5 for k in keys])
    pos = cache.y[idx]
    w[pos] /= w[pos].sum()
    w[~pos] /= w[~pos].sum()
    return torch.from_numpy(w)


def freeze_early(net: CovidNet, blocks: int) -> None:
    b = net.backbone
    for m in [b.conv_stem, b.bn1, *b.blocks[:blocks]]:
        m.eval()
        for p in m.parameters():
            p.requires_grad = False


def _train_mode(net: CovidNet, recipe: Recipe) -> None:
    """Training mode, with the frozen early stages kept in eval mode (their BatchNorm statistics stay ImageNet's)."""
    net.train()
    if recipe.imagenet:
        freeze_early(net, recipe.frozen_blocks)


def checkpoint_path(work: Path, name: str) -> Path:
    return work / f"run_{name}.pt"


def fit(cache: Cache, train_idx: np.ndarray, recipe: Recipe, work: Path,
        val_idx: np.ndarray | None = None) -> CovidNet:
    """Fine-tuning with a checkpoint every `checkpoint_every` steps; resumes from it.

    With `recipe.eval_every` and `val_idx`, early stopping: the validation AUC (positive class vs the rest)
    is measured every `eval_every` steps, the best weights are kept in the checkpoint, and training stops
    after `patience` measurements without an improvement of `min_delta`; the best weights are returned."""
    from ..metrics import auc

    ckpt = checkpoint_path(work, recipe.name)
    seed_everything(recipe.seed)
    net = CovidNet(len(CLASSES), imagenet=recipe.imagenet).to(memory_format=torch.channels_last)
    if recipe.imagenet:
        freeze_early(net, recipe.frozen_blocks)
    adversary = SourceAdversary(list(cache.sources[train_idx]), recipe.adversary) if recipe.adversary else None
    attention = LungAttention(net, recipe.attention_mode) if recipe.attention else None
    params = [p for p in net.parameters() if p.requires_grad] + (list(adversary.parameters()) if adversary else [])
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=recipe.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(recipe.seed)
    early = bool(recipe.eval_every and val_idx is not None)
    st: dict = {"step": 0, "history": [], "best": None, "stopped": False}
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=False)  # our own checkpoint (optimiser state), never a shipped file
        net.load_state_dict(st["net"])
        if adversary:
            adversary.load_state_dict(st["adversary"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        gen.set_state(st["gen"])
        if st.get("total") != recipe.steps:  # a different schedule: the checkpoint cannot be continued
            raise RuntimeError(f"checkpoint {ckpt} was made for {st.get('total')} steps, not {recipe.steps}; delete it")
    step = st["step"]
    history: list[dict] = st.get("history", [])
    best = st.get("best")
    done = step >= recipe.steps or st.get("stopped", False)
    weights = sample_weights(cache, train_idx)
    labels = torch.from_numpy(cache.cls)
    bar = tqdm(total=recipe.steps, initial=step, desc=f"train {recipe.name}", unit="step", disable=done)
    _train_mode(net, recipe)
    running = None
    while not done:
        pick = train_idx[torch.multinomial(weights, recipe.batch, replacement=True, generator=gen).numpy()]
        x, masks = augment(to_batch(cache, pick), gen, recipe.jpeg, to_batch(cache, pick, masks=True) if attention else None)
        x = network_batch(x, recipe)
        if adversary:
            f = net.features(x)
            loss = (F.cross_entropy(net.head(net.dropout(f)), labels[pick], label_smoothing=recipe.label_smoothing)
                    + adversary.loss(f, [cache.records[i].source for i in pick], step / recipe.steps))
        else:
            loss = F.cross_entropy(net(x), labels[pick], label_smoothing=recipe.label_smoothing)
        if attention:
            loss = loss + recipe.attention * attention.penalty(masks, torch.from_numpy(cache.y[pick])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", **({"val_auc": f"{history[-1]['auc']:.4f}"} if history else {}))
        done = step >= recipe.steps
        if early and (step % recipe.eval_every == 0 or done):
            net.eval()
            score = auc(cache.y[val_idx], positive_probability(infer(net, cache, val_idx, recipe)[0]))
            _train_mode(net, recipe)
            history.append({"step": step, "auc": score, "loss": running})
            if best is None or score >= best["auc"] + recipe.min_delta:
                best = {"step": step, "auc": score, "net": {k: v.clone() for k, v in net.state_dict().items()}}
            elif (step - best["step"]) >= recipe.patience * recipe.eval_every:
                done = True
        if done or step % recipe.checkpoint_every == 0:
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "gen": gen.get_state(), "step": step, "total": recipe.steps, "history": history,
                        "best": best, "stopped": done, "adversary": adversary.state_dict() if adversary else None}, ckpt)
    bar.close()
    if early and best is not None:
        net.load_state_dict(best["net"])
    return net.eval()


def stopping_record(work: Path, name: str) -> dict:
    """What early stopping saw in run `name`: the validation AUC at each measurement and the step kept."""
    st = torch.load(checkpoint_path(work, name), weights_only=False)
    best = st.get("best") or {}
    return {"steps_run": st["step"], "max_steps": st["total"], "best_step": best.get("step"),
            "best_val_auc": best.get("auc"), "stopped_early": st["step"] < st["total"], "history": st.get("history", [])}


def infer(net: CovidNet, cache: Cache, idx: np.ndarray, recipe: Recipe, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits and pooled features for the cached films `idx`, normalised as the recipe says."""
    logits, feats = [], []
    with torch.inference_mode():
        for i in range(0, len(idx), batch):
            f = net.features(network_batch(to_batch(cache, idx[i:i + batch]), recipe))
            feats.append(f)
            logits.append(net.head(f))
    return torch.cat(logits).numpy(), torch.cat(feats).numpy()


def positive_probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits) / temperature, -1)[:, CLASSES.index(POSITIVE)].numpy()


def fit_temperature(logits: np.ndarray, cls: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the T that minimises validation NLL, by a fine grid search."""
    lg, y = torch.from_numpy(logits), torch.from_numpy(cls)
    grid = np.exp(np.linspace(np.log(0.25), np.log(8), 400))
    nll = [F.cross_entropy(lg / t, y).item() for t in grid]
    return float(grid[int(np.argmin(nll))])
