"""Attribution maps for the CNN: which bands and pixels drive the star/galaxy decision.

Everything here works on the tensor the network actually sees: ``float32``
arrays of shape ``(n, C, H, W)`` (``C == 5`` bands in the order
``u, g, r, i, z``; for the stargal CNN these are the *scaled* cutouts produced
by the pipeline's front steps, see :func:`net_inputs`). Attributions have the
same shape as the inputs: ``attr[k, b, y, x]`` is the contribution of pixel
``(x, y)`` (0-based column ``x``, row ``y``) of band ``b`` of object ``k``.

The explained quantity
----------------------
The module must map ``(n, C, H, W)`` to ``(n, K)`` *logits* (or
log-probabilities; both give the same ``'log_odds'`` and ``'probability'``).
``output`` selects the scalar that is attributed, for class ``target``
(default ``1 = galaxy``):

``'log_odds'`` (default)
    ``log p_t - log(1 - p_t) = z_t - logsumexp(z_{j != t})``; for two classes
    simply ``z_1 - z_0``. Invariant to the softmax shift, unbounded, and the
    most linear of the three, so attributions add up cleanly.
``'logit'``
    the raw output ``z_t`` (depends on an arbitrary shift of the logits).
``'probability'``
    ``softmax(z)_t`` in ``[0, 1]``.

Methods
-------
:func:`integrated_gradients`
    Integrated Gradients (Sundararajan et al. 2017), pure torch, trapezoid
    rule along the straight path from a baseline to the input. Completeness:
    ``attr.sum() == f(x) - f(baseline)`` up to the quadrature error, for the
    chosen ``output`` (checked by :func:`ig_completeness_gap`).
:func:`shap_maps`
    SHAP values from :class:`shap.GradientExplainer` (expected gradients:
    integrated gradients averaged over random baselines drawn from a
    background set). Gradient based, so BatchNorm and (non in-place) ReLU
    layers are fine, unlike ``DeepExplainer``. In expectation
    ``attr.sum() == f(x) - E_background[f]``.

Summaries: :func:`band_importance` (share of ``|attr|`` per band),
:func:`radial_profile` and :func:`fraction_within` (how concentrated ``|attr|``
is around the cutout centre). The PNG grid of images and maps is
``experiments.explain_plots.plot_attributions`` (plotting lives in ``experiments/``;
this module needs no matplotlib).

All computations run on the module's device (CPU for stargal), put the module
in ``eval`` mode (BatchNorm uses running statistics, dropout is off) and
restore every submodule's training flag afterwards; gradients are taken with
:func:`torch.autograd.grad` with respect to the inputs only, so nothing is
accumulated into the parameters' ``.grad``. Results are deterministic.
The module must treat samples independently in ``eval`` mode (true for
conv/BatchNorm/ReLU/pooling/linear networks).

Examples
--------
>>> import numpy as np, torch
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> net = torch.nn.Sequential(torch.nn.Conv2d(5, 4, 3, padding=1), torch.nn.ReLU(),
...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
...                           torch.nn.Linear(4, 2))
>>> x = np.random.default_rng(0).normal(size=(3, 5, 9, 9)).astype(np.float32)
>>> attr = integrated_gradients(net, x, steps=16)
>>> attr.shape
(3, 5, 9, 9)
>>> gap = ig_completeness_gap(net, x, attr)
>>> bool((gap["relative_gap"] < 0.05).all())
True
>>> band_importance(attr)["importance"].sum().round(6)
np.float64(1.0)
"""

from __future__ import annotations

import numbers
from contextlib import contextmanager

import numpy as np
import pandas as pd

from stargal.sdss import BANDS

__all__ = [
    "OUTPUTS",
    "get_module",
    "net_inputs",
    "make_baseline",
    "integrated_gradients",
    "ig_completeness_gap",
    "shap_maps",
    "band_importance",
    "radial_profile",
    "fraction_within",
    "check_attributions",
    "channel_names",
]

#: Scalars that can be attributed (see the module docstring).
OUTPUTS: tuple[str, ...] = ("log_odds", "logit", "probability")

#: Named baselines understood by :func:`make_baseline`.
_BASELINES = ("zeros", "blur")


# --------------------------------------------------------------------------- helpers


def _torch():
    import torch

    return torch


def _check_inputs(inputs, name: str = "inputs") -> np.ndarray:
    """Return ``inputs`` as a C-contiguous float32 ``(n, C, H, W)`` array (validated)."""
    torch = _torch()
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.detach().cpu().numpy()
    try:
        arr = np.asarray(inputs, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{name} must be a numeric array of shape (n, C, H, W); got {type(inputs)!r}"
        ) from exc
    if arr.ndim != 4:
        raise ValueError(
            f"{name} must have shape (n, C, H, W) (4 dimensions); got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values; drop those objects first")
    return np.ascontiguousarray(arr)


def check_attributions(attributions, name: str = "attributions") -> np.ndarray:
    """``attributions`` as a float64 ``(n, C, H, W)`` array: non-empty, finite (a ValueError if not).

    Examples
    --------
    >>> check_attributions(np.zeros((1, 5, 3, 3))).dtype
    dtype('float64')
    """
    arr = np.asarray(attributions, dtype=np.float64)
    if arr.ndim != 4:
        raise ValueError(f"{name} must have shape (n, C, H, W); got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def channel_names(n_channels: int, bands=None) -> tuple[str, ...]:
    """Names of ``n_channels`` input channels: ``bands`` checked, or ``u..z`` (plus ``psf_u..z``).

    Examples
    --------
    >>> channel_names(10)[4:7]
    ('z', 'psf_u', 'psf_g')
    """
    if bands is None:
        if n_channels == len(BANDS):
            bands = BANDS
        elif n_channels == 2 * len(BANDS):  # PSF-aware: images, then each band's (scaled) PSF
            bands = tuple(BANDS) + tuple(f"psf_{b}" for b in BANDS)
        else:
            bands = tuple(f"c{k}" for k in range(n_channels))
    bands = tuple(str(b) for b in bands)
    if len(bands) != n_channels:
        raise ValueError(f"got {len(bands)} band names {bands} for {n_channels} channels")
    return bands


def _check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}; got {output!r}")
    return output


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _check_module(module):
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(
            f"module must be a torch.nn.Module; got {type(module).__name__} "
            "(use get_module(pipeline) to extract the fitted network)"
        )
    return module


def _device(module):
    torch = _torch()
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


@contextmanager
def _evaluating(module):
    """Put ``module`` in eval mode; restore every submodule's training flag on exit."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def _preserved_param_grads(module):
    """Restore the parameters' ``.grad`` afterwards (shap calls ``model.zero_grad()``)."""
    saved = [(p, p.grad) for p in module.parameters()]
    try:
        yield
    finally:
        for p, g in saved:
            p.grad = g


@contextmanager
def _preserved_numpy_rng():
    """Restore numpy's global RNG state afterwards (shap reseeds it)."""
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)


def _target_head(module, target: int, output: str, keepdim: bool):
    """A transient module mapping inputs to the attributed scalar, shape ``(n,)`` or ``(n, 1)``."""
    torch = _torch()

    class _TargetOutput(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            z = self.inner(x)
            if z.ndim != 2:
                raise ValueError(
                    "the module must return logits of shape (n, n_classes); "
                    f"got {tuple(z.shape)}"
                )
            if not 0 <= target < z.shape[1]:
                raise ValueError(
                    f"target={target} is not a valid class index for {z.shape[1]} outputs"
                )
            if output == "logit":
                s = z[:, target]
            elif output == "probability":
                s = torch.softmax(z, dim=1)[:, target]
            else:  # log_odds
                if z.shape[1] < 2:
                    raise ValueError("output='log_odds' needs at least 2 classes")
                mask = torch.zeros(z.shape[1], dtype=torch.bool, device=z.device)
                mask[target] = True
                others = torch.logsumexp(z.masked_fill(mask, float("-inf")), dim=1)
                s = z[:, target] - others
            return s.unsqueeze(1) if keepdim else s

    return _TargetOutput(module)


def _forward_scalar(
    module, x: np.ndarray, target: int, output: str, batch_size: int = 256
) -> np.ndarray:
    """The attributed scalar for each row of ``x`` (float64, eval mode, no grad)."""
    torch = _torch()
    head = _target_head(module, target, output, keepdim=False)
    device = _device(module)
    out = []
    with _evaluating(module), torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[start : start + batch_size]).to(device)
            out.append(head(xb).double().cpu().numpy())
    return np.concatenate(out)


# --------------------------------------------------------------------------- pipeline access


def get_module(estimator):
    """Return the fitted torch module inside a pipeline, a skorch net or a module.

    Parameters
    ----------
    estimator : Pipeline, skorch.NeuralNet or torch.nn.Module
        For a pipeline the last step is used; for a skorch net its ``module_``.

    Returns
    -------
    torch.nn.Module

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(3, 2)
    >>> get_module(lin) is lin
    True
    """
    torch = _torch()
    if isinstance(estimator, torch.nn.Module):
        return estimator
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    module = getattr(final, "module_", None)
    if module is None:
        if isinstance(final, torch.nn.Module):
            return final
        raise ValueError(
            f"{type(final).__name__} has no fitted torch module (no 'module_'); "
            "fit the pipeline first"
        )
    return module


def net_inputs(pipeline, X) -> np.ndarray:
    """The float32 tensor the network sees for ``X``.

    ``pipeline[:-1].transform(X)`` with the network's place taken by
    ``'passthrough'``: every step but the last (the network), skipping the
    samplers (steps with ``fit_resample``, e.g. the augmenter, which only act
    during ``fit``; imbalanced-learn's pipeline skips them at transform) and
    ``'passthrough'`` steps -- exactly what ``pipeline.predict`` does before
    calling the net. ``pipeline`` is not modified. A bare skorch net or torch
    module (no ``steps``) receives ``X`` itself.

    Parameters
    ----------
    pipeline : imblearn/sklearn Pipeline, skorch net or torch.nn.Module
        Fitted.
    X : DataFrame or array-like
        What the pipeline's first step accepts (an objects table, or cutouts).

    Returns
    -------
    ndarray of float32, shape (n, C, H, W)
        One row per row of ``X`` (transformers never drop rows); may contain
        NaN where a front step could not make a cutout.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import FunctionTransformer
    >>> from imblearn.pipeline import Pipeline
    >>> from imblearn import FunctionSampler
    >>> pipe = Pipeline([("double", FunctionTransformer(lambda a: 2 * a)),
    ...                  ("augment", FunctionSampler(validate=False)),
    ...                  ("net", FunctionTransformer())])
    >>> X = np.ones((2, 5, 3, 3))
    >>> net_inputs(pipe.fit(X, [0, 1]), X).max()
    np.float32(2.0)
    """
    Xt = X
    if getattr(pipeline, "steps", None):
        # the same fitted steps with the net replaced by 'passthrough' (``pipeline[:-1]`` alone
        # has no transform when its last step is a sampler); imblearn's pipeline skips
        # samplers at transform, as predict does before calling the net
        front = pipeline[:-1]
        front.steps.append((pipeline.steps[-1][0], "passthrough"))
        Xt = front.transform(X)
    torch = _torch()
    if isinstance(Xt, torch.Tensor):
        Xt = Xt.detach().cpu().numpy()
    Xt = np.asarray(Xt, dtype=np.float32)
    if Xt.ndim != 4:
        raise ValueError(
            "the network's input should have shape (n, C, H, W); "
            f"the front steps gave {Xt.shape}"
        )
    return Xt


# --------------------------------------------------------------------------- integrated gradients


def make_baseline(inputs, baseline="zeros", blur_sigma: float = 3.0) -> np.ndarray:
    """Baseline images for Integrated Gradients, same shape as ``inputs``.

    Parameters
    ----------
    inputs : array-like, shape (n, C, H, W)
    baseline : {'zeros', 'blur'}, float or array-like
        ``'zeros'``: all zeros (for standardised scaled cutouts this is the
        per-band mean level). ``'blur'``: each band of each input convolved
        with a Gaussian of ``blur_sigma`` pixels (``mode='nearest'`` edges),
        which removes the object's small-scale structure but keeps its
        colours and total flux. A number gives a constant image; an array must
        broadcast to ``inputs.shape`` (e.g. one ``(C, H, W)`` image).
    blur_sigma : float
        Gaussian sigma in pixels for ``'blur'``.

    Returns
    -------
    ndarray of float32, shape (n, C, H, W)

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((1, 5, 7, 7), np.float32); x[0, :, 3, 3] = 1
    >>> b = make_baseline(x, "blur", blur_sigma=1.0)
    >>> b.shape, bool(b[0, 2, 3, 3] < 1), round(float(b[0, 2].sum()), 2)
    ((1, 5, 7, 7), True, 1.0)
    """
    x = _check_inputs(inputs)
    if isinstance(baseline, str):
        if baseline == "zeros":
            return np.zeros_like(x)
        if baseline == "blur":
            from scipy.ndimage import gaussian_filter

            if not (isinstance(blur_sigma, numbers.Real) and blur_sigma > 0):
                raise ValueError(
                    f"blur_sigma must be a positive number of pixels; got {blur_sigma!r}"
                )
            sigma = (0, 0, float(blur_sigma), float(blur_sigma))
            return gaussian_filter(x, sigma=sigma, mode="nearest").astype(np.float32)
        raise ValueError(
            f"baseline must be one of {_BASELINES}, a number or an array; got {baseline!r}"
        )
    b = np.asarray(baseline, dtype=np.float32)
    try:
        b = np.broadcast_to(b, x.shape)
    except ValueError as exc:
        raise ValueError(
            f"baseline of shape {b.shape} does not broadcast to the inputs' shape {x.shape}"
        ) from exc
    if not np.isfinite(b).all():
        raise ValueError("baseline contains NaN or infinite values")
    return np.ascontiguousarray(b)


def integrated_gradients(
    module,
    inputs,
    target: int = 1,
    baseline="zeros",
    steps: int = 32,
    batch_size: int = 64,
    output: str = "log_odds",
    blur_sigma: float = 3.0,
) -> np.ndarray:
    """Integrated Gradients attributions (pure torch, trapezoid rule).

    ``attr = (x - x') * mean_alpha grad f(x' + alpha (x - x'))`` where the
    mean over ``alpha in [0, 1]`` uses the trapezoid rule on ``steps``
    intervals (``steps + 1`` gradient evaluations per input), so that
    ``attr.sum() ~= f(x) - f(x')`` (completeness) for the scalar ``f``
    selected by ``output`` (see the module docstring).

    Parameters
    ----------
    module : torch.nn.Module
        Maps ``(n, C, H, W)`` float32 to logits ``(n, K)``.
    inputs : array-like, shape (n, C, H, W)
        The network's inputs (see :func:`net_inputs`); finite.
    target : int
        Class whose score is explained (1 = galaxy).
    baseline : {'zeros', 'blur'}, float or array-like
        See :func:`make_baseline`.
    steps : int
        Number of trapezoid intervals along the path (>= 1).
    batch_size : int
        Number of path points per forward/backward pass.
    output : {'log_odds', 'logit', 'probability'}
        The attributed scalar.
    blur_sigma : float
        Sigma in pixels of the ``'blur'`` baseline.

    Returns
    -------
    ndarray of float32, shape (n, C, H, W)

    Examples
    --------
    >>> import numpy as np, torch
    >>> lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5 * 2 * 2, 2))
    >>> x = np.ones((1, 5, 2, 2), np.float32)
    >>> attr = integrated_gradients(lin, x, steps=4)
    >>> w = (lin[1].weight[1] - lin[1].weight[0]).detach().numpy().reshape(5, 2, 2)
    >>> bool(np.allclose(attr[0], w, atol=1e-6))  # linear model: attr = x * weight
    True
    """
    torch = _torch()
    _check_module(module)
    output = _check_output(output)
    target = _check_int(target, "target", 0)
    steps = _check_int(steps, "steps", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    x = _check_inputs(inputs)
    b = make_baseline(x, baseline, blur_sigma)

    n_points = steps + 1
    alphas = np.linspace(0.0, 1.0, n_points)
    weights = np.full(n_points, 1.0 / steps)
    weights[[0, -1]] *= 0.5
    head = _target_head(module, target, output, keepdim=False)
    device = _device(module)
    delta = x - b
    grad_sum = np.zeros(x.shape, dtype=np.float64)
    total = len(x) * n_points
    with _evaluating(module), torch.enable_grad():
        for start in range(0, total, batch_size):
            k = np.arange(start, min(start + batch_size, total))
            obj, step = np.divmod(k, n_points)
            a = alphas[step].astype(np.float32)[:, None, None, None]
            points = torch.from_numpy(b[obj] + a * delta[obj]).to(device).requires_grad_(True)
            scores = head(points)
            (grads,) = torch.autograd.grad(scores.sum(), points)
            g = grads.detach().double().cpu().numpy()
            np.add.at(grad_sum, obj, g * weights[step][:, None, None, None])
    return (delta.astype(np.float64) * grad_sum).astype(np.float32)


def ig_completeness_gap(
    module,
    inputs,
    attributions,
    target: int = 1,
    baseline="zeros",
    output: str = "log_odds",
    blur_sigma: float = 3.0,
) -> pd.DataFrame:
    """Check the completeness of Integrated Gradients, object by object.

    Compares ``attributions.sum()`` with ``f(x) - f(baseline)`` for the
    scalar ``f`` given by ``output`` (the same ``target``, ``baseline``,
    ``output`` and ``blur_sigma`` as used for the attributions).

    Parameters
    ----------
    module, inputs, target, baseline, output, blur_sigma
        As for :func:`integrated_gradients`.
    attributions : array-like, shape (n, C, H, W)

    Returns
    -------
    DataFrame, one row per object, columns
        ``attribution_sum``, ``output_delta`` (``f(x) - f(baseline)``),
        ``gap`` (absolute difference) and ``relative_gap``
        (``gap / max(|output_delta|, 1e-12)``).

    Examples
    --------
    See the module docstring.
    """
    _check_module(module)
    output = _check_output(output)
    target = _check_int(target, "target", 0)
    x = _check_inputs(inputs)
    attr = check_attributions(attributions)
    if attr.shape != x.shape:
        raise ValueError(f"attributions shape {attr.shape} != inputs shape {x.shape}")
    b = make_baseline(x, baseline, blur_sigma)
    delta = _forward_scalar(module, x, target, output) - _forward_scalar(module, b, target, output)
    s = attr.reshape(len(attr), -1).sum(axis=1)
    gap = np.abs(s - delta)
    return pd.DataFrame(
        {
            "attribution_sum": s,
            "output_delta": delta,
            "gap": gap,
            "relative_gap": gap / np.maximum(np.abs(delta), 1e-12),
        }
    )


# --------------------------------------------------------------------------- SHAP


def _normalise_shap_values(values, shape) -> np.ndarray:
    """Bring shap's output for our single-output head to ``shape``.

    shap 0.51 returns ``ndarray (n, C, H, W, n_outputs)`` (outputs stacked on
    the last axis); older releases returned a list with one array per output.
    """
    if isinstance(values, tuple):  # (values, ranks) when ranked_outputs is used
        values = values[0]
    if isinstance(values, list):
        if len(values) != 1:
            raise RuntimeError(f"expected SHAP values for one output, got a list of {len(values)}")
        values = values[0]
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape == tuple(shape) + (1,):
        arr = arr[..., 0]
    elif arr.shape == (1,) + tuple(shape):
        arr = arr[0]
    if arr.shape != tuple(shape):
        raise RuntimeError(
            f"unexpected SHAP output shape {arr.shape} for inputs of shape {tuple(shape)}"
        )
    return arr


def shap_maps(
    module,
    inputs,
    background,
    target: int = 1,
    nsamples: int = 200,
    output: str = "log_odds",
    batch_size: int = 50,
    local_smoothing: float = 0.0,
    random_state=0,
) -> np.ndarray:
    """SHAP attribution maps with :class:`shap.GradientExplainer` (expected gradients).

    For each input, ``nsamples`` points are drawn on straight paths between
    the input and random ``background`` rows; the gradient of the explained
    scalar at those points times ``(x - background)`` is averaged. In
    expectation ``attr.sum() == f(x) - mean(f(background))``.

    Parameters
    ----------
    module : torch.nn.Module
        Maps ``(n, C, H, W)`` float32 to logits ``(n, K)``; BatchNorm and
        non in-place ReLU are fine (eval mode is used).
    inputs : array-like, shape (n, C, H, W)
        The network's inputs to explain (see :func:`net_inputs`).
    background : array-like, shape (m, C, H, W)
        Reference inputs, ideally ~50-100 training-like network inputs.
    target : int
        Class whose score is explained (1 = galaxy).
    nsamples : int
        Gradient samples per input (more = less noise; cost is linear).
    output : {'log_odds', 'logit', 'probability'}
        The attributed scalar (see the module docstring). Only this single
        scalar is explained, which halves the cost compared to explaining both
        logits.
    batch_size : int
        Samples per forward/backward pass.
    local_smoothing : float
        Standard deviation of Gaussian noise added to the input (SmoothGrad
        style; 0 = none).
    random_state : int, RandomState or None
        Seeds the sampling (shap uses numpy's global RNG, whose state is
        restored afterwards).

    Returns
    -------
    ndarray of float64, shape (n, C, H, W)

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn.utils import check_random_state
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(5, 4, 3), torch.nn.BatchNorm2d(4),
    ...                           torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(100, 2))
    >>> rng = np.random.default_rng(0)
    >>> x, bg = rng.normal(size=(2, 5, 7, 7)), rng.normal(size=(10, 5, 7, 7))
    >>> sv = shap_maps(net, x, bg, nsamples=20)
    >>> sv.shape, bool(np.isfinite(sv).all()), net.training
    ((2, 5, 7, 7), True, True)
    """
    torch = _torch()
    import shap
    from sklearn.utils import check_random_state

    _check_module(module)
    output = _check_output(output)
    target = _check_int(target, "target", 0)
    nsamples = _check_int(nsamples, "nsamples", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    if not (isinstance(local_smoothing, numbers.Real) and local_smoothing >= 0):
        raise ValueError(f"local_smoothing must be a number >= 0; got {local_smoothing!r}")
    x = _check_inputs(inputs)
    bg = _check_inputs(background, name="background")
    if bg.shape[1:] != x.shape[1:]:
        raise ValueError(f"background images have shape {bg.shape[1:]}, inputs {x.shape[1:]}")
    seed = int(check_random_state(random_state).randint(0, 2**31 - 1))

    head = _target_head(module, target, output, keepdim=True)
    device = _device(module)
    with (
        _evaluating(module),
        _preserved_param_grads(module),
        _preserved_numpy_rng(),
        torch.random.fork_rng(devices=[]),
        torch.enable_grad(),
    ):
        torch.manual_seed(seed)
        explainer = shap.GradientExplainer(
            head,
            torch.from_numpy(bg).to(device),
            batch_size=batch_size,
            local_smoothing=float(local_smoothing),
        )
        values = explainer.shap_values(
            torch.from_numpy(x).to(device), nsamples=nsamples, rseed=seed
        )
    return _normalise_shap_values(values, x.shape)


# --------------------------------------------------------------------------- summaries


def band_importance(attributions, bands=None) -> pd.DataFrame:
    """Share of the absolute attribution carried by each band.

    Parameters
    ----------
    attributions : array-like, shape (n, C, H, W)
    bands : sequence of str, optional
        Channel names; default ``u, g, r, i, z`` for 5 channels.

    Returns
    -------
    DataFrame indexed by ``band`` with columns
        ``importance``: for each object, the fraction of its total ``|attr|``
        that falls in the band, averaged over objects (each object counts
        equally; objects whose attributions are all zero are skipped). Sums to
        1 (NaN everywhere if every object has zero attribution).
        ``mean_abs``: mean ``|attr|`` per pixel of that band over all objects
        (in units of the attributed output per pixel).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((2, 5, 3, 3)); a[:, 2] = 1.0; a[0, 0] = -1.0
    >>> band_importance(a)["importance"].round(2).tolist()
    [0.25, 0.0, 0.75, 0.0, 0.0]
    """
    attr = np.abs(check_attributions(attributions))
    names = channel_names(attr.shape[1], bands)
    per_band = attr.sum(axis=(2, 3))  # (n, C)
    totals = per_band.sum(axis=1)
    keep = totals > 0
    if keep.any():
        importance = (per_band[keep] / totals[keep, None]).mean(axis=0)
    else:
        importance = np.full(attr.shape[1], np.nan)
    return pd.DataFrame(
        {"importance": importance, "mean_abs": attr.mean(axis=(0, 2, 3))},
        index=pd.Index(names, name="band"),
    )


def _radii(shape_hw, center=None) -> np.ndarray:
    h, w = shape_hw
    if center is None:
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    else:
        cx, cy = (float(c) for c in center)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.hypot(xx - cx, yy - cy)


def radial_profile(attributions, center=None, bands=None) -> pd.DataFrame:
    """Absolute attribution as a function of distance from the cutout centre.

    Pixels are binned by the distance of their centre from ``center``
    rounded to the nearest integer (bin ``r`` holds ``r - 0.5 <= d < r + 0.5``).

    Parameters
    ----------
    attributions : array-like, shape (n, C, H, W)
    center : (x, y), optional
        0-based pixel coordinates (column, row) of the centre; default the
        cutout centre ``((W - 1) / 2, (H - 1) / 2)``.
    bands : sequence of str, optional
        Channel names for the per-band columns.

    Returns
    -------
    DataFrame indexed by ``radius`` (int, pixels) with columns
        ``n_pixels`` (pixels per band in the annulus), ``mean_abs`` (mean
        ``|attr|`` per pixel over objects and bands), ``mean_abs_<band>``
        for each band, ``fraction`` (share of each object's total ``|attr|``
        in the annulus, averaged over objects) and ``cumulative_fraction``.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((1, 5, 5, 5)); a[0, :, 2, 2] = 1.0
    >>> prof = radial_profile(a)
    >>> prof.loc[0, "fraction"], prof["cumulative_fraction"].iloc[-1]
    (np.float64(1.0), np.float64(1.0))
    """
    attr = np.abs(check_attributions(attributions))
    names = channel_names(attr.shape[1], bands)
    r = np.rint(_radii(attr.shape[2:], center)).astype(int)
    bins = np.unique(r)
    totals = attr.sum(axis=(1, 2, 3))
    keep = totals > 0
    rows = []
    for rb in bins:
        m = r == rb
        ring = attr[:, :, m]  # (n, C, n_pix)
        row = {"radius": int(rb), "n_pixels": int(m.sum()), "mean_abs": ring.mean()}
        for k, name in enumerate(names):
            row[f"mean_abs_{name}"] = ring[:, k].mean()
        share = ring[keep].sum(axis=(1, 2)) / totals[keep]
        row["fraction"] = share.mean() if keep.any() else np.nan
        rows.append(row)
    df = pd.DataFrame(rows).set_index("radius")
    df["cumulative_fraction"] = df["fraction"].cumsum()
    return df


def fraction_within(attributions, radius: float = 2.0, center=None) -> float:
    """Mean over objects of the fraction of ``|attr|`` at pixels within ``radius`` of the centre.

    Parameters
    ----------
    attributions : array-like, shape (n, C, H, W)
    radius : float
        Pixels; a pixel counts when the distance of its centre is ``<= radius``.
    center : (x, y), optional
        0-based pixel coordinates; default the cutout centre.

    Returns
    -------
    float
        NaN when every object has zero attribution. For comparison, a uniform
        map gives (pixels within ``radius``) / ``(H * W)``.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.ones((1, 5, 15, 15))
    >>> round(fraction_within(a, 2.0), 4)  # 13 of 225 pixels
    0.0578
    """
    attr = np.abs(check_attributions(attributions))
    if not (isinstance(radius, numbers.Real) and radius >= 0):
        raise ValueError(f"radius must be a number >= 0 (pixels); got {radius!r}")
    inside = _radii(attr.shape[2:], center) <= radius
    totals = attr.sum(axis=(1, 2, 3))
    keep = totals > 0
    if not keep.any():
        return float("nan")
    return float((attr[keep][:, :, inside].sum(axis=(1, 2)) / totals[keep]).mean())
