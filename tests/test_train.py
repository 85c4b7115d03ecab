"""Training helpers on small synthetic cases: splits keep patients whole, sampling is balanced,
temperature scaling finds the temperature that generated the data, a checkpointed run resumes, and the
card writer writes a card that inference loads."""
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO
from covidxr.card import CARD_FILE, ModelCard, Network
from covidxr.calibration import logodds as logit
from covidxr.model import FEATURES, CovidNet
from covidxr.training.augment import affine, augment, jpeg_roundtrip, warp
from covidxr.training.cache import Cache, network_batch, to_batch
from covidxr.training.card_writer import networks, write_card
from covidxr.training.data import CLASSES, POSITIVE, Record, patient_split
from covidxr.training.experiments import (ABLATIONS, FINAL, FOLD_STEPS, KAGGLE, NETWORKS, RECIPE, RECIPE_NETWORKS,
                                          ablation, ensemble_fold, fold_recipe, network_recipes, pooled_loso,
                                          recentre, report, run_fold)
from covidxr.training.loop import fit, fit_temperature, positive_probability, sample_weights, stopping_record
from covidxr.training.penalties import LungAttention, Reverse, SourceAdversary
from covidxr.training.recipe import VIEWS, Recipe
from covidxr.training.stages import calibrate, check_one_card

pytestmark = pytest.mark.slow

SIZE = FINAL.input_size


def records(n=60):
    return [Record(f"f{i}.jpg", KAGGLE if i < 40 else "hannover-mhh",
                   CLASSES[i % 3], f"p{i // 2}")
            for i in range(n)]


def random_cache(n, seed=0):
    """A cache of n random films (all lung) with the records above, for the training-loop tests."""
    rng = np.random.default_rng(seed)
    return Cache(rng.integers(0, 255, (n, SIZE, SIZE), dtype=np.uint8),
                 np.full((n, SIZE, SIZE), 255, np.uint8), np.ones(n), records(n))


def test_patient_split_keeps_patients_on_one_side():
    recs = records()
    val = patient_split(recs, 0.3)
    side = {}
    for r, v in zip(recs, val):
        assert side.setdefault(r.patient, v) == v
    assert 0 < val.sum() < len(recs)


def test_sample_weights_give_each_decision_class_half():
    recs = records()
    cache = Cache(np.zeros((60, 8, 8), np.uint8), np.zeros((60, 8, 8), np.uint8), np.ones(60), recs)
    idx = np.arange(60)
    w = sample_weights(cache, idx).numpy()
    y = cache.y
    assert abs(w[y].sum() - w[~y].sum()) < 1e-9
    # within a class, the rarer (source, label) group gets more weight per film: 6 Hannover vs 14 Kaggle positive films
    assert recs[42].label == recs[0].label == POSITIVE
    assert w[42] > w[0]


def test_fit_temperature_recovers_known_temperature():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 3, generator=g) * 3
    y = torch.multinomial(torch.softmax(logits / 2.0, -1), 1, generator=g)[:, 0]
    t = fit_temperature(logits.numpy(), y.numpy())
    assert 1.7 < t < 2.3


def test_fit_checkpoints_and_resumes(tmp_path):
    cache = random_cache(12, seed=0)
    recipe = Recipe("t", steps=2, batch=2, checkpoint_every=1)
    torch.set_num_threads(1)
    net = fit(cache, np.arange(12), recipe, tmp_path)
    ckpt = torch.load(tmp_path / "run_t.pt", weights_only=False)
    assert ckpt["step"] == 2 and ckpt["total"] == 2
    again = fit(cache, np.arange(12), recipe, tmp_path)  # finished run: loads, does not train again
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_early_stopping_stops_and_returns_the_best_weights(tmp_path):
    cache = random_cache(24, seed=1)
    val_idx = np.arange(12, 24)
    assert 0 < cache.y[val_idx].sum() < len(val_idx)
    recipe = Recipe("es", steps=40, batch=2, checkpoint_every=100, eval_every=1, patience=2, min_delta=0.5)
    torch.set_num_threads(1)
    net = fit(cache, np.arange(12), recipe, tmp_path, val_idx)
    rec = stopping_record(tmp_path, "es")
    # no measurement can beat the first by 0.5 AUC, so it stops after `patience` more and keeps the first
    assert rec["stopped_early"] and rec["steps_run"] == 3 and rec["best_step"] == 1
    assert [h["step"] for h in rec["history"]] == [1, 2, 3]
    best = torch.load(tmp_path / "run_es.pt", weights_only=False)["best"]["net"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, best[k])
    again = fit(cache, np.arange(12), recipe, tmp_path, val_idx)  # a stopped run resumes as stopped
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_gradient_reversal_flips_the_gradient_only():
    x = torch.ones(3, requires_grad=True)
    y = Reverse.apply(x, 0.5)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))


def test_fit_with_a_source_adversary_trains_and_resumes(tmp_path):
    cache = random_cache(12, seed=2)
    recipe = Recipe("adv", steps=2, batch=2, checkpoint_every=1, adversary=0.3)
    torch.set_num_threads(1)
    fit(cache, np.arange(12), recipe, tmp_path)
    st = torch.load(tmp_path / "run_adv.pt", weights_only=False)
    assert st["step"] == 2 and st["adversary"] is not None
    head = SourceAdversary(list(cache.sources), 0.3)
    head.load_state_dict(st["adversary"])
    assert head.sources == sorted(set(cache.sources))


def test_jpeg_roundtrip_degrades_some_films_and_keeps_the_rest():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 64, 64, generator=g)
    y = jpeg_roundtrip(x, torch.Generator().manual_seed(1), p=0.5)
    assert y.shape == x.shape and y.dtype == x.dtype and 0 <= y.min() and y.max() <= 1
    changed = [(y[i] - x[i]).abs().max().item() > 0.02 for i in range(8)]
    assert 0 < sum(changed) < 8  # about half are re-encoded (noise compresses badly), the rest are untouched
    assert all(torch.equal(y[i], x[i]) for i in range(8) if not changed[i])
    assert torch.equal(jpeg_roundtrip(x, torch.Generator().manual_seed(1), p=0.0), x)


def test_a_fold_with_the_early_stopped_recipe_stops_on_its_own_validation_films(tmp_path):
    cache = random_cache(48, seed=3)
    src = cache.sources
    val = np.zeros(48, bool)
    val[::4] = True  # one film in four: all three classes are on the validation side
    recipe = Recipe("fold", steps=40, batch=2, checkpoint_every=100, eval_every=1, patience=2, min_delta=0.5,
                    adversary=0.3)
    torch.set_num_threads(1)
    res = run_fold(cache, "fold", src != "hannover-mhh", src == "hannover-mhh", val, recipe, tmp_path)
    assert res["early_stopping"]["stopped_early"] and res["early_stopping"]["steps_run"] == 3
    assert res["adversary"] == 0.3 and res["held_out_sources"] == ["hannover-mhh"]
    assert res["test"]["n"] == int((src == "hannover-mhh").sum())
    assert not (tmp_path / "run_fold.pt").exists()  # the fold's model is dropped, its numbers kept


def test_pooled_loso_keeps_each_folds_decisions():
    a = (np.array([True, False, False]), np.array([0.30, 0.25, 0.05]), 0.2, "a")   # at 0.2: tp 1, fp 1, tn 1
    b = (np.array([True, True, False]), np.array([0.90, 0.60, 0.70]), 0.8, "b")    # at 0.8: tp 1, fn 1, tn 1
    r = pooled_loso([a, b])
    assert r["confusion"] == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    # re-centred logit margins: positives +0.54, +0.81, -0.98; negatives +0.29, -1.56, -0.54 -> 7 of 9 pairs in order
    assert r["n"] == 6 and r["n_pos"] == 3 and abs(r["auc"] - 7 / 9) < 1e-9
    for y, p, thr, _ in (a, b):
        assert np.array_equal(recentre(p, thr) >= 0.5, p >= thr)


def _cam_net(seed=0):
    """A small-scale CovidNet with non-trivial last BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = CovidNet(len(CLASSES))
    bn = net.backbone.bn2
    bn.running_mean.normal_(0, 0.5), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 1.5)
    net.head.weight.data.normal_()
    return net.eval()


def map_agreement(mine: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """The lowest per-film Pearson correlation of two (N, h, w) maps, and the largest per-film difference
    of the maps each scaled to a maximum of 1 (the scale explain's heatmap has)."""
    a, b = mine.detach().flatten(1).double(), theirs.detach().flatten(1).double()
    corr = min(float(np.corrcoef(x, y)[0, 1]) for x, y in zip(a.numpy(), b.numpy()))
    diff = ((a / a.amax(1, keepdim=True)) - (b / b.amax(1, keepdim=True))).abs().amax().item()
    return corr, diff


def test_the_penalty_map_is_the_grad_cam_that_explain_shows():
    """The closed form is pytorch-grad-cam's map up to float rounding, which depends on the machine, the
    number of torch threads and what ran before. Measured here (the file whole and the test alone, 1 and 2
    threads): correlation >= 0.99999999994, largest difference 1.4e-5 of the map's maximum; a fresh machine
    once showed about 4e-4 of the map's sum (some 1.5e-3 of its maximum). A wrong closed form (no BatchNorm
    scale, no ReLU6 slope, another class) gives correlation <= 0.87 and differences >= 0.6: the bounds sit
    far from both."""
    import copy

    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from covidxr.model import fold_batchnorm

    net = _cam_net()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    attention = LungAttention(net)
    with torch.no_grad():
        net(x)
    mine = attention.cam()
    shipped = copy.deepcopy(net)
    fold_batchnorm(shipped, keep=(shipped.cam_layer,))  # as Classifier.from_dir prepares it
    ref = GradCAM(model=shipped, target_layers=[shipped.cam_layer])
    out = ref.activations_and_grads(x)
    sum(ClassifierOutputTarget(CLASSES.index(POSITIVE))(o) for o in out).backward()
    a, g = ref.activations_and_grads.activations[0], ref.activations_and_grads.gradients[0]
    theirs = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1))
    assert mine.shape == theirs.shape == (2, 6, 6) and (theirs.sum((1, 2)) > 0).all()
    corr, diff = map_agreement(mine, theirs)
    assert corr > 0.999 and diff < 1e-2, f"correlation {corr}, difference {diff:.2e} of the map's maximum"


def test_the_penalty_counts_an_empty_covid_map_as_the_worst_case():
    """The "outside" form can be gamed by a map with no positive part; "inside" charges it in full."""
    net = _cam_net()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    lungs, none = torch.ones(2, 1, SIZE, SIZE), torch.zeros(2, 1, SIZE, SIZE)
    covid, other = torch.tensor([True, True]), torch.tensor([False, False])
    inside, outside = LungAttention(net, "inside"), LungAttention(copy_net := _cam_net(), "outside")
    with torch.no_grad():
        net(x), copy_net(x)
    r = inside.signed_map()
    assert (r > 0).any() and (r < 0).any()
    share = (F.relu(r).sum((1, 2)) / r.abs().sum((1, 2)))
    assert torch.allclose(inside.penalty(lungs, covid), 1 - share, atol=1e-5)  # negative evidence costs too
    assert torch.allclose(inside.penalty(none, covid), torch.ones(2), atol=1e-5)
    assert torch.allclose(inside.penalty(lungs, other), torch.zeros(2), atol=1e-5)
    assert torch.allclose(outside.penalty(lungs, covid), torch.zeros(2), atol=1e-5)
    assert torch.allclose(outside.penalty(none, covid), torch.ones(2), atol=1e-4)
    # a map with no positive evidence anywhere: "outside" calls it perfect, "inside" charges all of it
    net.head.weight.data.abs_(), net.backbone.bn2.weight.data.abs_()
    for a in (inside, outside):
        a.net = net
        a.pre = torch.ones(2, FEATURES, 6, 6)      # every unit in ReLU6's linear range
        a.conv = -torch.ones(2, FEATURES, 6, 6)    # every weight positive, every activation negative: r < 0
    assert not inside.cam().any()
    assert torch.allclose(inside.penalty(lungs, covid), torch.ones(2))
    assert torch.allclose(outside.penalty(lungs, covid), torch.zeros(2))


def test_the_penalty_gradient_moves_the_map_into_the_lungs():
    net = _cam_net(seed=3)
    attention = LungAttention(net)
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    lungs = torch.zeros(4, 1, SIZE, SIZE)
    lungs[..., 32:160, 16:176] = 1
    covid = torch.tensor([True, True, False, False])
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    before = None
    for _ in range(3):
        net(x)
        loss = attention.penalty(lungs, covid).mean()
        before = loss.item() if before is None else before
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        net(x)
        after = attention.penalty(lungs, covid).mean().item()
    assert after < before - 0.05


def test_augment_warps_a_follower_like_the_film_and_draws_the_same_numbers():
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    plain, none = augment(x, torch.Generator().manual_seed(5))
    with_mask, warped = augment(x, torch.Generator().manual_seed(5), follow=x.clone())
    assert none is None and torch.equal(plain, with_mask)  # the shipped recipe's random stream is unchanged
    theta = affine(3, 8, (0.9, 1.12), 0.06, torch.Generator().manual_seed(5))
    assert torch.equal(warped, warp(x, theta))


def test_fit_with_the_lung_attention_penalty_trains_and_resumes(tmp_path):
    cache = random_cache(12, seed=4)
    cache.masks[:, :, :60] = 0  # a lung mask that leaves part of each film out
    recipe = Recipe("att", steps=2, batch=2, checkpoint_every=1, attention=1.0)
    with pytest.raises(ValueError, match="mode"):
        fit(cache, np.arange(12), Recipe("bad", steps=1, batch=2, attention=1.0, attention_mode="both"), tmp_path)
    torch.set_num_threads(1)
    net = fit(cache, np.arange(12), recipe, tmp_path)
    assert torch.load(tmp_path / "run_att.pt", weights_only=False)["step"] == 2
    with torch.no_grad():
        net(network_batch(to_batch(cache, np.arange(2)), recipe))  # an eval forward still works with the hooks in place


def test_a_recipe_names_its_input_and_its_cache_as_before():
    """Caches are found again by name: the same settings must give the same file name as ever."""
    assert [r.cache_file for r in network_recipes(FINAL)] == ["cache_crop_192_lungs64_dilate0.025.npz",
                                                              "cache_film_lungs_192_lungs64_dilate0.025.npz"]
    assert replace(FINAL, mask_dilation=0.08).cache_file == "cache_crop_192_lungs64_dilate0.08.npz"
    assert replace(FINAL, crop_margin=0.1).cache_file != FINAL.cache_file  # another margin, other pixels
    assert FINAL.view == VIEWS["crop"] and not VIEWS["film"].lung_mask
    with pytest.raises(ValueError, match="variant"):
        Recipe("x", 1, variant="nope")
    check_one_card(network_recipes(FINAL))
    with pytest.raises(ValueError, match="mask_dilation"):
        check_one_card([FINAL, replace(FINAL, name="other", mask_dilation=0.05)])


def test_the_recipe_ablations_are_the_shipped_networks_recipes():
    """The card's Kaggle-only row for the shipped ensemble must come from each network's own settings."""
    assert list(RECIPE_NETWORKS) == list(NETWORKS) and RECIPE_NETWORKS[""] == RECIPE
    for net_recipe, name in zip(network_recipes(fold_recipe("x")), RECIPE_NETWORKS.values()):
        recipe, split = ablation(name)
        assert split == "kaggle_only" and recipe.name == f"ablation_{name}" and recipe.steps == FOLD_STEPS
        assert replace(recipe, name=net_recipe.name) == net_recipe
        assert f"{name}_without_kaggle" not in ABLATIONS  # that split is the Kaggle LOSO fold itself, already run


def test_the_first_network_keeps_the_run_names_of_the_single_model():
    """Runs are resumed and results reused by name: the first network's must not change."""
    names = [r.name for r in network_recipes(fold_recipe("loso_x"))]
    assert names[0] == "loso_x" and len(set(names)) == len(NETWORKS)
    assert [r.variant for r in network_recipes(FINAL)] == list(NETWORKS.values())
    assert network_recipes(FINAL)[0] == FINAL


def fold(scores, threshold, variant="crop"):
    return {"name": "f", "variant": variant, "val_auc": 0.9, "threshold": threshold, "n_train": 10,
            "held_out_sources": ["s"], "test_scores": scores,
            "test": {"auc": 0.5, "sensitivity": 0.5, "specificity": 0.5}}


def test_an_ensemble_fold_averages_the_networks_recentred_log_odds():
    y = np.array([True, True, False, False])
    a = fold([0.9, 0.3, 0.25, 0.1], 0.2)          # each network at its own operating point
    b = fold([0.6, 0.9, 0.95, 0.2], 0.8, "film")
    r = ensemble_fold([a, b], y, np.array(["s"] * 4))
    z = (logit(recentre(np.array(a["test_scores"]), 0.2)) + logit(recentre(np.array(b["test_scores"]), 0.8))) / 2
    assert r["test_scores"] == pytest.approx(list(1 / (1 + np.exp(-z))), abs=1e-6)
    assert r["threshold"] == 0.5 and r["variant"] == "crop+film"
    assert r["test"]["confusion"] == {"tp": int(((z >= 0) & y).sum()), "fp": int(((z >= 0) & ~y).sum()),
                                      "tn": int(((z < 0) & ~y).sum()), "fn": int(((z < 0) & y).sum())}
    one = ensemble_fold([a], y, np.array(["s"] * 4))  # one network: its own decisions, unchanged
    assert [p >= 0.5 for p in one["test_scores"]] == [p >= 0.2 for p in a["test_scores"]]


def test_the_ensemble_is_calibrated_on_its_mean_logits():
    rng = np.random.default_rng(0)
    cache = random_cache(60)
    val = np.zeros(60, bool)
    val[::2] = True
    n = int(val.sum())
    truth = np.eye(3)[cache.cls[val]] * 4.0
    nets = [{"name": f"m{i}", "variant": "crop", "val_auc": 0.9, "early_stopping": {}, "seconds": 1,
             "val_logits": (truth + rng.normal(0, 3, (n, 3))).tolist()} for i in range(2)]
    r = calibrate(nets, cache, val, FINAL.min_sensitivity)
    mean = np.mean([m["val_logits"] for m in nets], 0)
    assert np.allclose(r["val_logits"], mean)
    assert r["temperature"] == pytest.approx(fit_temperature(mean, cache.cls[val]))
    p = positive_probability(mean, r["temperature"])
    y = cache.y[val]
    assert (p[y] >= r["threshold"]).mean() >= FINAL.min_sensitivity  # the rule holds on the films it was set on
    assert r["validation"]["n"] == n and [m["name"] for m in r["members"]] == ["m0", "m1"]


def synthetic_results(tmp_path):
    """A data folder (manifest only), a model folder with a stand-in model.pt, and the stored results
    of the final stage and of every LOSO fold and Kaggle-only ablation of the shipped networks."""
    data, work, out = tmp_path / "cxr", tmp_path / "work", tmp_path / "weights"
    for d in (data, work / "results", out):
        d.mkdir(parents=True)
    rows = [(f"{s}/{i}.png", s, CLASSES[i % 3], "") for s in (KAGGLE, "hannover-mhh") for i in range(9)]
    (data / "MANIFEST.csv").write_text("path,source,label,patient_id\n" + "".join(",".join(r) + "\n" for r in rows))
    (out / "model.pt").write_bytes(b"stand-in weights")
    rng = np.random.default_rng(0)
    y = {s: np.array([r[2] == POSITIVE for r in rows if r[1] == s]) for s in (KAGGLE, "hannover-mhh")}

    def fold_result(name, variant, held_out):
        truth = np.concatenate([y[s] for s in held_out])
        p = np.clip(0.3 * truth + rng.uniform(0, 0.7, len(truth)), 0.01, 0.99)
        src = np.concatenate([[s] * len(y[s]) for s in held_out])
        return {"name": name, "variant": variant, "imagenet": True, "adversary": 0.0, "attention": 3.0,
                "attention_mode": "inside", "frozen_blocks": 3, "jpeg_augmentation": True, "steps": FOLD_STEPS,
                "n_train": 9, "val_auc": 0.9, "threshold": 0.4, "held_out_sources": sorted(held_out),
                "test": report(truth, p, 0.4, src), "test_scores": [round(float(v), 6) for v in p]}

    for s in (KAGGLE, "hannover-mhh"):
        for suffix, variant in NETWORKS.items():
            (work / "results" / f"loso_{s}{suffix}.json").write_text(json.dumps(fold_result(f"loso_{s}{suffix}", variant, [s])))
    for name in RECIPE_NETWORKS.values():
        r = fold_result(f"ablation_{name}", ablation(name)[0].variant, ["hannover-mhh"])
        (work / "results" / f"ablation_{name}.json").write_text(json.dumps(r))
    val_y, val_p = np.array([True, False] * 5), np.linspace(0.1, 0.9, 10)
    final = {"temperature": 1.2, "threshold": 0.3, "validation": report(val_y, val_p, 0.3),
             "members": [{"name": r.name, "variant": r.variant, "val_auc": 0.9, "early_stopping": {}, "seconds": 1}
                         for r in network_recipes(FINAL)],
             "lungs": {"val_dice_mean": 0.9}, "seconds": 2, "total_seconds": 3, "n_train": 14, "n_val": 4,
             "ood": {"file": "ood.npz", "sha256": "0" * 64}}
    (work / "results" / "final.json").write_text(json.dumps(final))
    return data, work, out


def test_the_card_writer_writes_a_card_that_inference_loads(tmp_path):
    data, work, out = synthetic_results(tmp_path)
    written = write_card(out, work, data)
    raw = json.loads((out / CARD_FILE).read_text())
    assert not {"blank_outside_lungs", "members"} & set(raw) and "ablation_notes" not in raw["metrics"]
    assert raw["networks"] == [{"name": "final", "view": {"crop_to_lungs": True, "blank_outside_lungs": False,
                                                          "equalize_over": "lungs", "lung_mask": True},
                                "variant": "crop"},
                               {"name": "final_film", "view": {"crop_to_lungs": False, "blank_outside_lungs": False,
                                                               "equalize_over": "box", "lung_mask": True},
                                "variant": "film_lungs"}]
    card = ModelCard.load(out)
    assert card == written and card.networks == networks()
    assert card.networks == [Network(r.name, r.view, r.variant) for r in network_recipes(FINAL)]
    assert [Network.state_prefix(i) for i in range(len(card.networks))] == ["cls.", "cls1."]  # model.pt's prefixes
    assert (card.input_size, card.lung_input_size, card.crop_margin, card.mask_dilation, tuple(card.mean), tuple(card.std)) \
        == (FINAL.input_size, FINAL.lung_size, FINAL.crop_margin, FINAL.mask_dilation, FINAL.mean, FINAL.std)
    assert card.class_names == list(CLASSES) and card.positive_class == POSITIVE
    assert card.threshold == 0.3 and card.temperature == 1.2
    assert [r["variant"] for r in card.training["networks"]] == list(NETWORKS.values())
    loso = card.metrics["leave_one_source_out"]  # the ensemble's folds, each network's alone beside it
    assert sorted(r["held_out"] for r in loso) == sorted([KAGGLE, "hannover-mhh"])
    assert all([m["variant"] for m in r["members"]] == list(NETWORKS.values()) for r in loso)
    assert card.metrics["leave_one_source_out_pooled"]["all_sources"]["n"] == 18
    assert card.metrics["kaggle_only_to_other_sources"]["variant"] == "+".join(NETWORKS.values())


def test_inference_never_imports_training():
    code = ("import sys, covidxr, covidxr.cli, covidxr.explain, covidxr.evaluate, covidxr.ood, covidxr.orientation;"
            "covidxr.cli.parser();"
            "print([m for m in sys.modules if m.startswith('covidxr.training')])")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def synthetic_films(tmp_path, n_per_group=6):
    """Tiny grey films with two dark 'lungs' (PNG), from two sources and every class, and a lung-mask set."""
    from PIL import Image

    data, lungs = tmp_path / "cxr", tmp_path / "lungs"
    rng = np.random.default_rng(0)
    rows, masks = [], []
    for source in (KAGGLE, "hannover-mhh"):
        for label in CLASSES:
            for i in range(n_per_group):
                a = np.full((96, 80), 0.75) + rng.normal(0, 0.05, (96, 80))
                mask = np.zeros((96, 80), bool)
                mask[20:80, 10:36] = mask[20:80, 44:70] = True
                a[mask] -= 0.4 + 0.1 * CLASSES.index(label)
                path = f"{source}/{label}_{i}.png"
                (data / source).mkdir(parents=True, exist_ok=True)
                Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8)).save(data / path)
                rows.append(f"{path},{source},{label},")
                if i < 2:
                    lungs.mkdir(exist_ok=True)
                    Image.fromarray(mask.astype(np.uint8) * 255).save(lungs / path.replace("/", "_"))
                    masks.append(f"{path},{path.replace('/', '_')},{label}")
    (data / "MANIFEST.csv").write_text("path,source,label,patient_id\n" + "\n".join(rows) + "\n")
    (lungs / "MANIFEST.csv").write_text("film,mask,label\n" + "\n".join(masks) + "\n")
    return data, lungs


def test_the_final_stage_writes_a_model_that_loads_and_predicts(tmp_path):
    """`covidxr train --stages final` end to end, with a tiny recipe on tiny films: model.pt holds every
    network under its prefix, the card names them, and the shipped loader accepts the result."""
    from covidxr.classifier import Classifier
    from covidxr.films import read_film
    from covidxr.training.stages import main

    data, lungs = synthetic_films(tmp_path)
    tiny = replace(FINAL, steps=2, batch=2, eval_every=1, patience=1, input_size=64, checkpoint_every=100)
    out = tmp_path / "weights"
    card = main(data, out, lungs, tmp_path / "work", ("final",), threads=1, recipe=tiny)
    state = torch.load(out / "model.pt", weights_only=True)
    assert {k.split(".", 1)[0] for k in state} == {"cls", "cls1", "lung"}
    assert card.networks == networks(tiny) and card.input_size == 64 and card.ood["file"]
    clf = Classifier.from_dir(out, threads=1)
    assert clf.card == card and len(clf.nets) == len(NETWORKS)
    (pred,) = clf.predict([read_film(data / KAGGLE / f"{POSITIVE}_0.png")])
    assert 0 <= pred.probability <= 1 and pred.ood is not None
    again = main(data, out, lungs, tmp_path / "work", ("card",), threads=1, recipe=tiny)  # rewrites the card only
    assert again.weights_sha256 == card.weights_sha256 and again.networks == card.networks
