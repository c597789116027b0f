"""Shared helpers of the CNN tests: synthetic cutouts, tiny network settings, a split recorder,
a flip augmenter (used by test_cnn, test_classifier, test_pipelines, test_models, test_predict_units)."""

import numpy as np
from scipy.ndimage import gaussian_filter
from sklearn.base import BaseEstimator
from skorch.callbacks import Callback

BAND_SCALE = np.array([0.4, 1.0, 1.4, 1.7, 1.9])  # u g r i z relative flux


def synthetic_cutouts(n, size=15, galaxy_fraction=0.35, seed=0):
    """Point sources (Gaussian PSF) vs extended exponential discs (PSF-convolved) + noise.

    Returns X (n, 5, size, size) float32 nanomaggies, y (1 = galaxy) and sky groups
    (blocks of 10 consecutive objects).
    """
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < galaxy_fraction).astype(np.int64)
    half = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size] - half
    X = np.empty((n, 5, size, size), dtype=np.float64)
    for i in range(n):
        dx, dy = rng.uniform(-0.3, 0.3, 2)
        r2 = (xx - dx) ** 2 + (yy - dy) ** 2
        psf = 1.1
        if y[i]:
            q, phi = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
            c, s = np.cos(phi), np.sin(phi)
            u, v = c * (xx - dx) + s * (yy - dy), (-s * (xx - dx) + c * (yy - dy)) / q
            img = np.exp(-np.hypot(u, v) / rng.uniform(1.3, 2.5))
            img = gaussian_filter(img, psf)
        else:
            img = np.exp(-r2 / (2 * psf ** 2))
        img /= img.sum()
        flux = 10 ** rng.uniform(1.3, 2.3)
        X[i] = flux * BAND_SCALE[:, None, None] * img[None]
    X += rng.normal(0, 0.15, X.shape)
    groups = np.arange(n) // 10
    return X.astype(np.float32), y, groups


def tiny(**kw):
    params = dict(width=8, max_epochs=4, batch_size=32, lr=3e-3, device="cpu")
    params.update(kw)
    return params


class FlipAugmenter(BaseEstimator):
    """Stand-in for the cutout augmenter: appends mirrored copies of random rows in fit.

    Like imbalanced-learn samplers it records ``sample_indices_`` (source row of every
    output row).
    """

    def __init__(self, fraction=0.5, random_state=0):
        self.fraction = fraction
        self.random_state = random_state

    def fit_resample(self, X, y):
        rng = np.random.default_rng(self.random_state)
        extra = rng.choice(len(X), int(self.fraction * len(X)))
        self.sample_indices_ = np.concatenate([np.arange(len(X)), extra])
        return (np.concatenate([X, X[extra, :, :, ::-1]]), np.concatenate([y, y[extra]]))


class SharedRecord(list):
    """A list that copies of its owner share: ``clone`` (GridSearchCV) deep-copies callbacks."""

    def __deepcopy__(self, memo):
        return self


class RecordSplit(Callback):
    """Observer: records the internal train/valid indices skorch actually used into ``seen``."""

    def __init__(self, seen):
        self.seen = seen

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        pass

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        self.seen.append((np.asarray(dataset_train.indices), np.asarray(dataset_valid.indices)))


def split_recorder():
    """``(seen, callback)``: a fresh record, shared by every clone of the callback."""
    seen = SharedRecord()
    return seen, RecordSplit(seen)

