"""Training helpers on small synthetic cases: splits keep patients whole, sampling is balanced,
temperature scaling finds the temperature that generated the data, and a checkpointed run resumes."""
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covidxr import train as T


def records(n=60):
    return [T.Record(f"f{i}.jpg", "kaggle-radiography-db-224px" if i < 40 else "hannover-mhh",
                     "covid" if i % 3 == 0 else ("normal" if i % 3 == 1 else "pneumonia"), f"p{i // 2}")
            for i in range(n)]


def random_cache(n, seed=0):
    """A cache of n random films (all lung) with the records above, for the training-loop tests."""
    rng = np.random.default_rng(seed)
    return T.Cache(rng.integers(0, 255, (n, T.INPUT_SIZE, T.INPUT_SIZE), dtype=np.uint8),
                   np.full((n, T.INPUT_SIZE, T.INPUT_SIZE), 255, np.uint8), np.ones(n), records(n))


def test_patient_split_keeps_patients_on_one_side():
    recs = records()
    val = T.patient_split(recs, 0.3)
    side = {}
    for r, v in zip(recs, val):
        assert side.setdefault(r.patient, v) == v
    assert 0 < val.sum() < len(recs)


def test_sample_weights_give_each_decision_class_half():
    recs = records()
    cache = T.Cache(np.zeros((60, 8, 8), np.uint8), np.zeros((60, 8, 8), np.uint8), np.ones(60), recs)
    idx = np.arange(60)
    w = T.sample_weights(cache, idx).numpy()
    y = cache.y
    assert abs(w[y].sum() - w[~y].sum()) < 1e-9
    # within a class, the rarer (source, label) group gets more weight per film: 6 Hannover vs 14 Kaggle COVID films
    assert recs[42].label == recs[0].label == "covid"
    assert w[42] > w[0]


def test_fit_temperature_recovers_known_temperature():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 3, generator=g) * 3
    y = torch.multinomial(torch.softmax(logits / 2.0, -1), 1, generator=g)[:, 0]
    t = T.fit_temperature(logits.numpy(), y.numpy())
    assert 1.7 < t < 2.3


def test_fit_checkpoints_and_resumes(tmp_path):
    cache = random_cache(12, seed=0)
    cfg = T.RunConfig("t", steps=2, batch=2, checkpoint_every=1)
    torch.set_num_threads(1)
    net = T.fit(cache, np.arange(12), cfg, tmp_path)
    ckpt = torch.load(tmp_path / "run_t.pt", weights_only=False)
    assert ckpt["step"] == 2 and ckpt["total"] == 2
    again = T.fit(cache, np.arange(12), cfg, tmp_path)  # finished run: loads, does not train again
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_early_stopping_stops_and_returns_the_best_weights(tmp_path):
    cache = random_cache(24, seed=1)
    val_idx = np.arange(12, 24)
    assert 0 < cache.y[val_idx].sum() < len(val_idx)
    cfg = T.RunConfig("es", steps=40, batch=2, checkpoint_every=100, eval_every=1, patience=2, min_delta=0.5)
    torch.set_num_threads(1)
    net = T.fit(cache, np.arange(12), cfg, tmp_path, val_idx)
    rec = T.stopping_record(tmp_path, "es")
    # no measurement can beat the first by 0.5 AUC, so it stops after `patience` more and keeps the first
    assert rec["stopped_early"] and rec["steps_run"] == 3 and rec["best_step"] == 1
    assert [h["step"] for h in rec["history"]] == [1, 2, 3]
    best = torch.load(tmp_path / "run_es.pt", weights_only=False)["best"]["net"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, best[k])
    again = T.fit(cache, np.arange(12), cfg, tmp_path, val_idx)  # a stopped run resumes as stopped
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_gradient_reversal_flips_the_gradient_only():
    x = torch.ones(3, requires_grad=True)
    y = T._Reverse.apply(x, 0.5)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))


def test_fit_with_a_source_adversary_trains_and_resumes(tmp_path):
    cache = random_cache(12, seed=2)
    cfg = T.RunConfig("adv", steps=2, batch=2, checkpoint_every=1, adversary=0.3)
    torch.set_num_threads(1)
    T.fit(cache, np.arange(12), cfg, tmp_path)
    st = torch.load(tmp_path / "run_adv.pt", weights_only=False)
    assert st["step"] == 2 and st["adversary"] is not None
    head = T.SourceAdversary(list(cache.sources), 0.3)
    head.load_state_dict(st["adversary"])
    assert head.sources == sorted(set(cache.sources))


def test_jpeg_roundtrip_degrades_some_films_and_keeps_the_rest():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 64, 64, generator=g)
    y = T.jpeg_roundtrip(x, torch.Generator().manual_seed(1), p=0.5)
    assert y.shape == x.shape and y.dtype == x.dtype and 0 <= y.min() and y.max() <= 1
    changed = [(y[i] - x[i]).abs().max().item() > 0.02 for i in range(8)]
    assert 0 < sum(changed) < 8  # about half are re-encoded (noise compresses badly), the rest are untouched
    assert all(torch.equal(y[i], x[i]) for i in range(8) if not changed[i])
    assert torch.equal(T.jpeg_roundtrip(x, torch.Generator().manual_seed(1), p=0.0), x)


def test_a_fold_with_the_early_stopped_recipe_stops_on_its_own_validation_films(tmp_path):
    cache = random_cache(48, seed=3)
    src = cache.sources
    val = np.zeros(48, bool)
    val[::4] = True  # one film in four: all three classes are on the validation side
    cfg = T.RunConfig("fold", steps=40, batch=2, checkpoint_every=100, eval_every=1, patience=2, min_delta=0.5,
                      adversary=0.3)
    torch.set_num_threads(1)
    res = T.run_fold(cache, "fold", src != "hannover-mhh", src == "hannover-mhh", val, cfg, tmp_path)
    assert res["early_stopping"]["stopped_early"] and res["early_stopping"]["steps_run"] == 3
    assert res["adversary"] == 0.3 and res["held_out_sources"] == ["hannover-mhh"]
    assert res["test"]["n"] == int((src == "hannover-mhh").sum())
    assert not (tmp_path / "run_fold.pt").exists()  # the fold's model is dropped, its numbers kept


def test_pooled_loso_keeps_each_folds_decisions():
    a = (np.array([True, False, False]), np.array([0.30, 0.25, 0.05]), 0.2, "a")   # at 0.2: tp 1, fp 1, tn 1
    b = (np.array([True, True, False]), np.array([0.90, 0.60, 0.70]), 0.8, "b")    # at 0.8: tp 1, fn 1, tn 1
    r = T.pooled_loso([a, b])
    assert r["confusion"] == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    # re-centred logit margins: positives +0.54, +0.81, -0.98; negatives +0.29, -1.56, -0.54 -> 7 of 9 pairs in order
    assert r["n"] == 6 and r["n_pos"] == 3 and abs(r["auc"] - 7 / 9) < 1e-9
    for y, p, thr, _ in (a, b):
        assert np.array_equal(T.recentre(p, thr) >= 0.5, p >= thr)


def _cam_net(seed=0):
    """A small-scale CovidNet with non-trivial last BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = T.CovidNet(len(T.CLASSES))
    bn = net.backbone.bn2
    bn.running_mean.normal_(0, 0.5), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 1.5)
    net.head.weight.data.normal_()
    return net.eval()


def test_the_penalty_map_is_the_grad_cam_that_explain_shows():
    import copy

    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from covidxr.model import fold_batchnorm

    net = _cam_net()
    x = torch.randn(2, 3, T.INPUT_SIZE, T.INPUT_SIZE, generator=torch.Generator().manual_seed(1))
    attention = T.LungAttention(net)
    with torch.no_grad():
        net(x)
    mine = attention.cam()
    shipped = copy.deepcopy(net)
    fold_batchnorm(shipped, keep=(shipped.cam_layer,))  # as Classifier.from_dir prepares it
    ref = GradCAM(model=shipped, target_layers=[shipped.cam_layer])
    out = ref.activations_and_grads(x)
    sum(ClassifierOutputTarget(T.CLASSES.index(T.POSITIVE))(o) for o in out).backward()
    a, g = ref.activations_and_grads.activations[0], ref.activations_and_grads.gradients[0]
    theirs = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1))
    assert mine.shape == theirs.shape == (2, 6, 6) and (theirs.sum((1, 2)) > 0).all()
    assert torch.allclose(mine / mine.sum((1, 2), keepdim=True), theirs / theirs.sum((1, 2), keepdim=True), atol=1e-4)


def test_the_penalty_counts_an_empty_covid_map_as_the_worst_case():
    """The "outside" form can be gamed by a map with no positive part; "inside" charges it in full."""
    net = _cam_net()
    x = torch.randn(2, 3, T.INPUT_SIZE, T.INPUT_SIZE, generator=torch.Generator().manual_seed(1))
    lungs, none = torch.ones(2, 1, T.INPUT_SIZE, T.INPUT_SIZE), torch.zeros(2, 1, T.INPUT_SIZE, T.INPUT_SIZE)
    covid, other = torch.tensor([True, True]), torch.tensor([False, False])
    inside, outside = T.LungAttention(net, "inside"), T.LungAttention(copy_net := _cam_net(), "outside")
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
        a.pre = torch.ones(2, T.FEATURES, 6, 6)      # every unit in ReLU6's linear range
        a.conv = -torch.ones(2, T.FEATURES, 6, 6)    # every weight positive, every activation negative: r < 0
    assert not inside.cam().any()
    assert torch.allclose(inside.penalty(lungs, covid), torch.ones(2))
    assert torch.allclose(outside.penalty(lungs, covid), torch.zeros(2))


def test_the_penalty_gradient_moves_the_map_into_the_lungs():
    net = _cam_net(seed=3)
    attention = T.LungAttention(net)
    x = torch.randn(4, 3, T.INPUT_SIZE, T.INPUT_SIZE, generator=torch.Generator().manual_seed(2))
    lungs = torch.zeros(4, 1, T.INPUT_SIZE, T.INPUT_SIZE)
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
    plain, none = T.augment(x, torch.Generator().manual_seed(5))
    with_mask, warped = T.augment(x, torch.Generator().manual_seed(5), follow=x.clone())
    assert none is None and torch.equal(plain, with_mask)  # the shipped recipe's random stream is unchanged
    theta = T._affine(3, 8, (0.9, 1.12), 0.06, torch.Generator().manual_seed(5))
    assert torch.equal(warped, T.warp(x, theta))


def test_fit_with_the_lung_attention_penalty_trains_and_resumes(tmp_path):
    cache = random_cache(12, seed=4)
    cache.masks[:, :, :60] = 0  # a lung mask that leaves part of each film out
    cfg = T.RunConfig("att", steps=2, batch=2, checkpoint_every=1, attention=1.0)
    with pytest.raises(ValueError, match="mode"):
        T.fit(cache, np.arange(12), T.RunConfig("bad", steps=1, batch=2, attention=1.0, attention_mode="both"), tmp_path)
    torch.set_num_threads(1)
    net = T.fit(cache, np.arange(12), cfg, tmp_path)
    assert torch.load(tmp_path / "run_att.pt", weights_only=False)["step"] == 2
    with torch.no_grad():
        net(T.normalise(T.to_batch(cache, np.arange(2))))  # an eval forward still works with the hooks in place


def test_the_recipe_ablations_are_the_shipped_networks_recipes():
    """The card's Kaggle-only row for the shipped ensemble must come from each network's own settings."""
    assert list(T.RECIPE_MEMBERS) == list(T.MEMBERS) and T.RECIPE_MEMBERS[""] == T.RECIPE
    for member, name in zip(T.member_configs(T.fold_config("x")), T.RECIPE_MEMBERS.values()):
        settings = dict(T.ABLATIONS[name])
        assert settings.pop("split") == "kaggle_only"
        assert T.RunConfig("x", T.FOLD_STEPS, **settings) == replace(member, name="x")
        assert f"{name}_without_kaggle" not in T.ABLATIONS  # that split is the Kaggle LOSO fold itself, already run


def test_the_first_network_keeps_the_run_names_of_the_single_model():
    """Runs are resumed and results reused by name: the first network's must not change."""
    names = [c.name for c in T.member_configs(T.fold_config("loso_x"))]
    assert names[0] == "loso_x" and len(set(names)) == len(T.MEMBERS)
    assert [c.variant for c in T.member_configs(T.FINAL)] == list(T.MEMBERS.values())
    assert T.member_configs(T.FINAL)[0] == T.FINAL


def fold(scores, threshold, variant="crop"):
    return {"name": "f", "variant": variant, "val_auc": 0.9, "threshold": threshold, "n_train": 10,
            "held_out_sources": ["s"], "test_scores": scores,
            "test": {"auc": 0.5, "sensitivity": 0.5, "specificity": 0.5}}


def test_an_ensemble_fold_averages_the_networks_recentred_log_odds():
    y = np.array([True, True, False, False])
    a = fold([0.9, 0.3, 0.25, 0.1], 0.2)          # each network at its own operating point
    b = fold([0.6, 0.9, 0.95, 0.2], 0.8, "film")
    r = T.ensemble_fold([a, b], y, np.array(["s"] * 4))
    z = (T.logit(T.recentre(np.array(a["test_scores"]), 0.2)) + T.logit(T.recentre(np.array(b["test_scores"]), 0.8))) / 2
    assert r["test_scores"] == pytest.approx(list(1 / (1 + np.exp(-z))), abs=1e-6)
    assert r["threshold"] == 0.5 and r["variant"] == "crop+film"
    assert r["test"]["confusion"] == {"tp": int(((z >= 0) & y).sum()), "fp": int(((z >= 0) & ~y).sum()),
                                      "tn": int(((z < 0) & ~y).sum()), "fn": int(((z < 0) & y).sum())}
    one = T.ensemble_fold([a], y, np.array(["s"] * 4))  # one network: its own decisions, unchanged
    assert [p >= 0.5 for p in one["test_scores"]] == [p >= 0.2 for p in a["test_scores"]]


def test_the_ensemble_is_calibrated_on_its_mean_logits():
    rng = np.random.default_rng(0)
    cache = random_cache(60)
    val = np.zeros(60, bool)
    val[::2] = True
    n = int(val.sum())
    truth = np.eye(3)[cache.cls[val]] * 4.0
    members = [{"name": f"m{i}", "variant": "crop", "val_auc": 0.9, "early_stopping": {}, "seconds": 1,
                "val_logits": (truth + rng.normal(0, 3, (n, 3))).tolist()} for i in range(2)]
    r = T.calibrate(members, cache, val)
    mean = np.mean([m["val_logits"] for m in members], 0)
    assert np.allclose(r["val_logits"], mean)
    assert r["temperature"] == pytest.approx(T.fit_temperature(mean, cache.cls[val]))
    p = T.positive_probability(mean, r["temperature"])
    y = cache.y[val]
    assert (p[y] >= r["threshold"]).mean() >= T.MIN_SENSITIVITY  # the rule holds on the films it was set on
    assert r["validation"]["n"] == n and [m["name"] for m in r["members"]] == ["m0", "m1"]


