"""Tests for stargal.explain (and experiments.explanations) on a tiny synthetic task.

Task: 5-band 15x15 images of a point source (Gaussian sigma 0.7 px) vs an
extended one (sigma 2.2 px) with random flux, sub-pixel offset and Gaussian
noise; a small conv-BatchNorm-ReLU CNN (non in-place ReLU) is trained for a
few epochs with plain torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from stargal.explain import (
    band_importance,
    fraction_within,
    get_module,
    ig_completeness_gap,
    integrated_gradients,
    make_baseline,
    net_inputs,
    radial_profile,
    shap_maps,
)

from experiments.explain_plots import plot_attributions

torch.set_num_threads(1)

SIZE = 15
SED = np.array([0.3, 0.7, 1.0, 1.2, 1.3], dtype=np.float32)  # relative flux in u, g, r, i, z
NOISE = 0.05


class SmallCNN(nn.Module):
    """Same interface as stargal.nets.StarGalaxyCNN: (n, 5, H, W) float32 -> logits (n, 2)."""

    def __init__(self, n_bands: int = 5, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_bands, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.head(self.body(x))


def blob(sigma, flux, dx=0.0, dy=0.0, size=SIZE):
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size]
    g = np.exp(-((xx - c - dx) ** 2 + (yy - c - dy) ** 2) / (2 * sigma**2))
    return flux * g / g.max()


def make_data(n, seed, sed=SED):
    """Half stars (y=0, point sources), half galaxies (y=1, extended)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = np.empty((n, 5, SIZE, SIZE), np.float32)
    for k in range(n):
        sigma = 2.2 if y[k] else 0.7
        img = blob(sigma, rng.uniform(0.5, 2.0), *rng.uniform(-0.5, 0.5, 2))
        X[k] = sed[:, None, None] * img[None] + rng.normal(0, NOISE, (5, SIZE, SIZE))
    return X, y


def train(module, X, y, epochs=12, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=0.02)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y).long()
    g = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=g).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(module(Xt[idx]), yt[idx]).backward()
            opt.step()
    return module


@pytest.fixture(scope="module")
def data():
    return make_data(256, seed=1), make_data(64, seed=2)


@pytest.fixture(scope="module")
def model(data):
    (X, y), _ = data
    torch.manual_seed(0)
    return train(SmallCNN(), X, y).eval()


def log_odds(module, x):
    with torch.no_grad():
        z = module.eval()(torch.from_numpy(np.asarray(x, np.float32)))
    return (z[:, 1] - z[:, 0]).numpy()


def test_model_learned_the_task(model, data):
    _, (Xte, yte) = data
    assert ((log_odds(model, Xte) > 0) == yte).mean() > 0.9


# ----------------------------------------------------------------------------- integrated gradients


@pytest.mark.parametrize("baseline", ["zeros", "blur"])
@pytest.mark.parametrize("output", ["log_odds", "probability"])
def test_ig_completeness(model, data, baseline, output):
    _, (Xte, _) = data
    x = Xte[:12]
    attr = integrated_gradients(model, x, baseline=baseline, steps=64, output=output)
    assert attr.shape == x.shape and attr.dtype == np.float32
    gap = ig_completeness_gap(model, x, attr, baseline=baseline, output=output)
    assert list(gap.columns) == ["attribution_sum", "output_delta", "gap", "relative_gap"]
    big = gap["output_delta"].abs() > (0.5 if output == "log_odds" else 0.05)
    assert big.sum() >= 4
    assert (gap.loc[big, "relative_gap"] < 0.05).all(), gap
    # the reported delta is f(x) - f(baseline) for the galaxy log-odds
    if output == "log_odds":
        b = make_baseline(x, baseline)
        expected = log_odds(model, x) - log_odds(model, b)
        np.testing.assert_allclose(gap["output_delta"], expected, rtol=1e-4, atol=1e-4)


def test_ig_detects_incompleteness_with_too_few_steps(model, data):
    # a gap measure that always says 0 would be useless: with 1 step on a
    # nonlinear net the trapezoid estimate is clearly off for some objects
    _, (Xte, _) = data
    x = Xte[:12]
    gap = ig_completeness_gap(model, x, integrated_gradients(model, x, steps=1))
    assert gap["relative_gap"].max() > 0.05


def test_ig_band_r_only_signal_concentrates_in_r(model):
    rng = np.random.default_rng(5)
    x = rng.normal(0, NOISE, (6, 5, SIZE, SIZE)).astype(np.float32)
    for k in range(6):
        x[k, 2] += blob(2.2 if k % 2 else 0.7, 2.0)
    attr = integrated_gradients(model, x, steps=32)
    imp = band_importance(attr)["importance"]
    assert imp.idxmax() == "r"
    assert imp["r"] > 2 * imp.drop("r").max(), imp
    # zero baseline + exactly empty bands -> exactly zero attribution there
    x0 = np.zeros_like(x)
    x0[:, 2] = x[:, 2]
    attr0 = integrated_gradients(model, x0, steps=16)
    assert np.all(attr0[:, [0, 1, 3, 4]] == 0) and np.abs(attr0[:, 2]).sum() > 0


def test_ig_target_symmetry_and_determinism(model, data):
    _, (Xte, _) = data
    x = Xte[:4]
    a1 = integrated_gradients(model, x, target=1, steps=16, batch_size=7)
    a1b = integrated_gradients(model, x, target=1, steps=16, batch_size=64)
    a0 = integrated_gradients(model, x, target=0, steps=16)
    np.testing.assert_allclose(a1, a1b, rtol=1e-4, atol=1e-6)  # batching does not matter
    # log-odds of class 0 = -log-odds of class 1
    np.testing.assert_allclose(a0, -a1, rtol=1e-4, atol=1e-6)


def test_ig_linear_model_matches_closed_form():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(5 * 3 * 3, 2))
    x = np.random.default_rng(0).normal(size=(3, 5, 3, 3)).astype(np.float32)
    base = np.full((5, 3, 3), 0.5, np.float32)
    attr = integrated_gradients(lin, x, baseline=base, steps=2, output="logit")
    w = lin[1].weight[1].detach().numpy().reshape(5, 3, 3)
    np.testing.assert_allclose(attr, (x - base) * w, rtol=1e-5, atol=1e-6)


def test_state_is_restored_and_no_grad_leaks(data):
    _, (Xte, _) = data
    torch.manual_seed(3)
    net = SmallCNN()
    net.train()
    net.body[1].eval()  # mixed modes must come back as they were
    modes = [m.training for m in net.modules()]
    stats = net.body[1].running_mean.clone()
    rng_state = np.random.get_state()
    with torch.no_grad():  # callers inside no_grad still get gradients
        attr = integrated_gradients(net, Xte[:3], steps=4)
        sv = shap_maps(net, Xte[:2], Xte[10:20], nsamples=8)
    assert np.abs(attr).sum() > 0 and np.abs(sv).sum() > 0
    assert [m.training for m in net.modules()] == modes
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(net.body[1].running_mean, stats)  # eval mode: BN statistics untouched
    assert torch.is_grad_enabled()
    np.testing.assert_array_equal(np.random.get_state()[1], rng_state[1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"baseline": "mean"}, "baseline must be"),
        ({"baseline": np.zeros((3, 3))}, "does not broadcast"),
        ({"steps": 0}, "steps"),
        ({"target": 2}, "target=2"),
        ({"output": "prob"}, "output must be"),
        ({"baseline": "blur", "blur_sigma": 0}, "blur_sigma"),
    ],
)
def test_ig_bad_parameters(model, kwargs, match):
    x = np.zeros((1, 5, SIZE, SIZE), np.float32)
    with pytest.raises(ValueError, match=match):
        integrated_gradients(model, x, **kwargs)


def test_bad_inputs(model):
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        integrated_gradients(model, np.zeros((5, SIZE, SIZE)))
    bad = np.zeros((2, 5, SIZE, SIZE))
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        integrated_gradients(model, bad)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        integrated_gradients("not a module", np.zeros((1, 5, SIZE, SIZE)))
    with pytest.raises(ValueError, match="background"):
        shap_maps(model, np.zeros((1, 5, SIZE, SIZE)), np.zeros((4, 5, 9, 9)))


# ----------------------------------------------------------------------------- SHAP


def test_shap_maps_shape_finite_and_additive(model, data):
    (Xtr, _), (Xte, _) = data
    bg = Xtr[:50]
    x = Xte[:8]
    sv = shap_maps(model, x, bg, nsamples=150, random_state=0)
    assert sv.shape == x.shape and np.isfinite(sv).all()
    # expected gradients: sum of attributions ~ f(x) - E_bg[f] (Monte Carlo, so loose)
    sums = sv.reshape(len(x), -1).sum(axis=1)
    expected = log_odds(model, x) - log_odds(model, bg).mean()
    assert np.corrcoef(sums, expected)[0, 1] > 0.9
    np.testing.assert_allclose(sums, expected, atol=0.35 * np.abs(expected).max())


def test_shap_deterministic_and_target_symmetric(model, data):
    (Xtr, _), (Xte, _) = data
    a = shap_maps(model, Xte[:3], Xtr[:20], nsamples=16, random_state=7)
    b = shap_maps(model, Xte[:3], Xtr[:20], nsamples=16, random_state=7)
    c = shap_maps(model, Xte[:3], Xtr[:20], nsamples=16, random_state=8)
    neg = shap_maps(model, Xte[:3], Xtr[:20], nsamples=16, random_state=7, target=0)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_allclose(neg, -a, rtol=1e-4, atol=1e-7)


def test_shap_with_batchnorm_relu_untrained_model_in_train_mode(data):
    # a fresh model left in train mode (BatchNorm batch statistics would break
    # per-sample explanations); shap_maps must switch to eval and back
    (Xtr, _), (Xte, _) = data
    torch.manual_seed(1)
    net = SmallCNN().train()
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert all(not getattr(m, "inplace", False) for m in net.modules())
    sv = shap_maps(net, Xte[:2], Xtr[:10], nsamples=10, output="probability")
    assert sv.shape == (2, 5, SIZE, SIZE) and np.isfinite(sv).all()
    assert net.training


# ----------------------------------------------------------------------------- summaries and plots


def test_band_importance_sums_to_one(model, data):
    _, (Xte, _) = data
    attr = integrated_gradients(model, Xte[:5], steps=8)
    bi = band_importance(attr)
    assert list(bi.index) == ["u", "g", "r", "i", "z"] and bi.index.name == "band"
    assert bi["importance"].sum() == pytest.approx(1.0)
    assert (bi["importance"] >= 0).all() and (bi["mean_abs"] >= 0).all()
    np.testing.assert_allclose(bi["mean_abs"], np.abs(attr).mean(axis=(0, 2, 3)), rtol=1e-6)


def test_band_importance_weights_objects_equally():
    a = np.zeros((2, 5, 3, 3))
    a[0, 0] = 100.0  # a huge object all in u
    a[1, 4] = 0.01  # a faint one all in z
    imp = band_importance(a)["importance"]
    assert imp["u"] == pytest.approx(0.5) and imp["z"] == pytest.approx(0.5)
    assert band_importance(np.zeros((1, 5, 3, 3)))["importance"].isna().all()
    assert list(band_importance(np.ones((1, 3, 2, 2))).index) == ["c0", "c1", "c2"]


def test_radial_profile_and_fraction_within():
    a = np.zeros((2, 5, 15, 15))
    a[0, 2, 7, 7] = 1.0  # centre pixel (0-based row 7, column 7)
    a[1, 1, 7, 10] = -3.0  # 3 px to the right of the centre
    prof = radial_profile(a)
    assert prof.index.name == "radius" and prof.index[0] == 0
    assert prof.loc[0, "n_pixels"] == 1 and prof.loc[1, "n_pixels"] == 8  # d = 1 and sqrt(2)
    assert prof.loc[0, "fraction"] == pytest.approx(0.5)
    assert prof.loc[3, "fraction"] == pytest.approx(0.5)
    assert prof["cumulative_fraction"].iloc[-1] == pytest.approx(1.0)
    assert prof.loc[0, "mean_abs_r"] == pytest.approx(0.5)  # mean over the 2 objects
    assert fraction_within(a, 2.0) == pytest.approx(0.5)
    assert fraction_within(a, 3.0) == pytest.approx(1.0)
    assert fraction_within(a, 0.5, center=(10, 7)) == pytest.approx(0.5)


def test_radial_concentration_of_point_sources(model, data):
    # for a point-vs-extended task, attributions should sit near the centre
    # more than a uniform map would (13/225 of the pixels are within 2 px)
    _, (Xte, _) = data
    attr = integrated_gradients(model, Xte[:10], steps=16)
    assert fraction_within(attr, 2.0) > 2 * 13 / 225


def test_plot_writes_png(tmp_path, model, data):
    _, (Xte, _) = data
    attr = integrated_gradients(model, Xte[:3], steps=4)
    path = plot_attributions(Xte[:3], attr, ["star", "galaxy", "star"], tmp_path / "sub" / "ig.png")
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="titles"):
        plot_attributions(Xte[:3], attr, ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="shape"):
        plot_attributions(Xte[:2], attr, None, tmp_path / "x.png")


def test_explain_imports_without_matplotlib():
    # the plotting lives in experiments.explain_plots; stargal.explain itself needs no matplotlib
    import subprocess
    import sys

    code = "import sys, stargal.explain; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ pipelines and the experiment


def _duplicate(X, y):
    return np.concatenate([X, X]), np.concatenate([y, y])


def make_pipeline(cube):
    """objects table (column 'k' indexes ``cube``) -> cutouts -> x2 -> [augment] -> skorch net."""
    from imblearn import FunctionSampler
    from imblearn.pipeline import Pipeline
    from skorch import NeuralNetClassifier
    from sklearn.preprocessing import FunctionTransformer

    net = NeuralNetClassifier(
        SmallCNN,
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=0.02,
        max_epochs=6,
        batch_size=32,
        train_split=None,
        verbose=0,
    )
    return Pipeline(
        [
            ("cut", FunctionTransformer(lambda t: cube[t["k"].to_numpy()])),
            ("scale", FunctionTransformer(lambda a: 2.0 * a)),
            ("augment", FunctionSampler(func=_duplicate, validate=False)),
            ("net", net),
        ]
    )


@pytest.fixture(scope="module")
def fitted_pipeline(data):
    (Xtr, ytr), (Xte, yte) = data
    cube = np.concatenate([Xtr, Xte])
    table = pd.DataFrame({"k": np.arange(len(cube))}, index=np.arange(len(cube)) + 1000)
    torch.manual_seed(0)
    pipe = make_pipeline(cube).fit(table.iloc[: len(Xtr)], ytr)
    return pipe, table.iloc[len(Xtr) :], yte, Xte


def test_net_inputs_skips_samplers_and_net(fitted_pipeline):
    pipe, table, _, Xte = fitted_pipeline
    steps = list(pipe.steps)
    xin = net_inputs(pipe, table)  # pipe[:-1] ends with the sampler: skipped, as at predict
    assert pipe.steps == steps  # the pipeline is left as it was
    assert xin.dtype == np.float32 and xin.shape == Xte.shape  # sampler skipped: no duplicated rows
    np.testing.assert_allclose(xin, 2.0 * Xte)
    module = get_module(pipe)
    assert module is pipe.named_steps["net"].module_
    proba = pipe.predict_proba(table)[:, 1]
    with torch.no_grad():
        p = torch.softmax(module.eval()(torch.from_numpy(xin)), 1)[:, 1].numpy()
    np.testing.assert_allclose(proba, p, rtol=1e-5, atol=1e-6)
    # a bare module / net takes X as is
    assert net_inputs(module, Xte).shape == Xte.shape
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        net_inputs(module, Xte[0])


def test_experiment_run_writes_outputs(tmp_path, fitted_pipeline):
    from experiments.explanations import explain as run

    pipe, table, yte, _ = fitted_pipeline
    y = yte.copy()
    y[:3] = 1 - y[:3]  # guarantee some misclassified objects
    mags = np.linspace(17, 21, len(y))
    kw = dict(mags=mags, n_examples=2, random_state=0, shap_nsamples=40, ig_steps=32)
    res = run(tmp_path, pipe, table, y, **kw)
    names = ("explain_shap.png", "explain_ig.png", "band_importance.csv", "radial_importance.png")
    for name in names:
        assert (tmp_path / name).stat().st_size > 0
    bi = pd.read_csv(tmp_path / "band_importance.csv")
    assert set(bi["method"]) == {"shap", "integrated_gradients"}
    assert bi.groupby("method")["importance"].sum().round(6).eq(1).all()
    ex = res["examples"]
    assert len(ex["misclassified"]) == 2 and len(ex["star"]) == 2 and len(ex["galaxy"]) == 2
    pred = pipe.predict(table)
    assert all(pred[i] != y[i] for i in ex["misclassified"])
    assert all(pred[i] == y[i] == 0 for i in ex["star"])
    assert all(pred[i] == y[i] == 1 for i in ex["galaxy"])
    assert res["top_band_shap"] in "ugriz" and res["top_band_ig"] in "ugriz"
    assert 0 <= res["frac_abs_within_2px_ig"] <= 1 and 0 <= res["frac_abs_within_2px_shap"] <= 1
    assert res["ig_median_relative_gap"] < 0.05
    # deterministic
    res2 = run(tmp_path / "again", pipe, table, y, **kw)
    assert res2["examples"] == ex
    assert res2["frac_abs_within_2px_shap"] == res["frac_abs_within_2px_shap"]


def test_experiment_run_accepts_cutouts_and_checks_y(tmp_path, fitted_pipeline, data):
    from experiments.explanations import explain as run

    pipe, _, yte, Xte = fitted_pipeline
    # a pipeline whose front expects cutouts: just the net (X already the net's input)
    net = pipe.named_steps["net"]
    res = run(tmp_path, net, 2.0 * Xte, yte, n_examples=1, shap_nsamples=10, ig_steps=4)
    assert res["n_explained"] >= 2
    with pytest.raises(ValueError, match="y"):
        run(tmp_path, net, 2.0 * Xte, yte[:-1])
