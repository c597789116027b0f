"""Model factories: the CNN (skorch), the random-forest baseline and a majority baseline.

Every factory returns an :class:`imblearn.pipeline.Pipeline` with fixed step
names, so hyper-parameters route the usual scikit-learn way::

    front steps (e.g. 'align', 'cut')  ->  ['augment']  ->  ['scale']  ->  'net'
    front steps                        ->  'features'   ->  'forest'
    front steps                        ->  'flatten'    ->  'majority'

e.g. ``net__module__width``, ``net__lr``, ``net__optimizer__weight_decay``,
``cut__size``, ``forest__max_depth``.  With ``front=None`` the pipelines take
float32 cutouts ``(n, 5, H, W)`` (bands ``u, g, r, i, z``, nanomaggies)
directly; the caller adds ``[('align', Aligner()), ('cut', Cutter())]`` to start
from an objects table.

Group-aware internal validation
-------------------------------
skorch holds out part of the training data for early stopping.  Its default
split is random, which leaks: neighbouring objects of one sky region would be
in both the internal train and valid sets.  :class:`SkyValidSplit` holds out
whole *groups* (sky regions, e.g. from ``stargal.split.sky_groups``) instead.
The groups reach it as an ordinary fit parameter:

* plain: ``pipe.fit(X, y, net__groups=groups)``; in :class:`~sklearn.model_selection.GridSearchCV`
  (metadata routing off): ``search.fit(X, y, groups=groups, net__groups=groups)``
  -- scikit-learn slices ``net__groups`` to each training fold;
* with ``sklearn.set_config(enable_metadata_routing=True)``:
  ``search.fit(X, y, groups=groups)`` sends ``groups`` both to the outer CV and,
  because :class:`SkyValidSplit` requests it, to the net's internal split.

skorch forwards fit parameters to the module's ``forward`` as well;
:class:`StarGalaxyNet` drops ``groups`` there.  When an augmentation step adds
rows during ``fit``, :class:`SkyPipeline` re-aligns ``groups`` with the new rows
through the sampler's ``sample_indices_`` (the source row of every output row,
the imbalanced-learn convention), so an augmented copy always stays in its
source object's group.  Without groups the split falls back to a stratified
random split and warns.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import time
import warnings

import numpy as np
import torch
from imblearn.pipeline import Pipeline
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedShuffleSplit, ShuffleSplit
from sklearn.utils.validation import _num_samples, check_is_fitted
from skorch import NeuralNetClassifier
from skorch.callbacks import EarlyStopping, EpochScoring
from skorch.dataset import ValidSplit, get_len
from skorch.utils import is_dataset, to_numpy, to_tensor

from sklearn.pipeline import FeatureUnion

from stargal.features import MeasuredFeatures, PhotometricFeatures
from stargal.rule import SDSSTypeRule
from stargal.nets import StarGalaxyCNN
from stargal._validation import Integral, Interval, StrOptions, n_rows, split_inputs, validate_params
from stargal.split import GroupHoldOut

__all__ = [
    "SkyValidSplit",
    "StarGalaxyNet",
    "SkyPipeline",
    "Flatten",
    "make_cnn_net",
    "make_cnn_pipeline",
    "make_forest_pipeline",
    "make_majority_pipeline",
    "make_rule_pipeline",
    "make_measured_forest_pipeline",
    "make_hybrid_pipeline",
    "InputUnion",
    "valid_balanced_accuracy",
    "valid_roc_auc",
    "LeakyValidationWarning",
    "torch_threads",
    "PREDICT_BATCH_SIZE",
    "ENV_PREDICT_THREADS",
]

#: Rows per forward pass when :class:`StarGalaxyNet` predicts. Every pass has exactly this many
#: rows (the last batch is zero-padded), so an object's probability never depends on which
#: other objects share its batch: torch's CPU kernels pick their code path by batch shape,
#: and one shape means one path (bit-for-bit equal results alone or in a crowd).
PREDICT_BATCH_SIZE = 512
#: Environment variable fixing the torch intra-op threads used at prediction (skips the probe).
ENV_PREDICT_THREADS = "STARGAL_PREDICT_THREADS"
#: Batches between two probes of the best thread count at prediction (load changes).
_PROBE_EVERY = 32


@contextlib.contextmanager
def torch_threads(n):
    """Run the block with ``torch.set_num_threads(n)``; restore the previous setting after.

    ``n=None`` leaves the setting alone. Used at prediction so that a forward pass runs on as
    many intra-op threads as there are free cores, without changing the caller's setting.

    Examples
    --------
    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    old = torch.get_num_threads()
    if n is not None and int(n) != old:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def _thread_candidates() -> list[int]:
    """Thread counts worth trying at prediction: the process's setting, halves of it, and 1."""
    env = os.environ.get(ENV_PREDICT_THREADS, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"{ENV_PREDICT_THREADS} must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"{ENV_PREDICT_THREADS} must be a positive integer, got {env!r}")
        return [n]
    top = max(1, torch.get_num_threads())
    try:
        top = min(top, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        pass
    out, n = [], top
    while n > 1:
        out.append(n)
        n //= 2
    return out + [1]

_RESERVED = ("augment", "psf", "scale", "net", "features", "forest", "flatten", "majority", "rule", "inputs")


class LeakyValidationWarning(UserWarning):
    """The internal validation split had no sky groups and fell back to a random split."""


# --------------------------------------------------------------------------- split
class SkyValidSplit(ValidSplit):
    """Group-aware train/valid split for skorch (``train_split``): skorch's ``ValidSplit`` with
    the study's group chooser :class:`stargal.split.GroupHoldOut` as its ``cv``.

    Whole groups (sky regions) are held out so that no group has rows in both the internal
    training and validation sets, exactly as the study's ``'valid'`` split is chosen
    (``StratifiedGroupKFold`` with ``round(1 / fraction)`` folds; the fold closest to
    ``fraction`` of the rows). The subclass only adds what ``ValidSplit`` lacks: the class
    labels ``y`` reach the group splitter (for the class balance), and without ``groups`` the
    split falls back to a stratified random split with a :class:`LeakyValidationWarning`.
    Deterministic for a given ``random_state``.

    Parameters
    ----------
    fraction : float, default=0.2
        Target fraction of rows in the validation set, in ``(0, 0.5]``.
    random_state : int or None, default=0
        Seed of the group shuffling.

    Examples
    --------
    >>> import numpy as np
    >>> split = SkyValidSplit(fraction=0.25)
    >>> groups = np.repeat(np.arange(8), 10)
    >>> y = np.tile([0, 1], 40)
    >>> train, valid = next(split.split(np.zeros(80), y, groups))
    >>> set(groups[train]).isdisjoint(groups[valid]), len(valid)
    (True, 20)
    """

    stratified = False  # ValidSplit's own stratification is for non-group splitters

    def __init__(self, fraction=0.2, random_state=0):
        self.fraction = fraction
        self.random_state = random_state

    def __repr__(self) -> str:
        return f"SkyValidSplit(fraction={self.fraction!r}, random_state={self.random_state!r})"

    @property
    def cv(self) -> GroupHoldOut:
        """The group splitter (skorch routes ``groups`` to it under metadata routing)."""
        return GroupHoldOut(self.fraction, random_state=self.random_state)

    def get_n_splits(self, X=None, y=None, groups=None):
        """Always 1: one train/valid split."""
        return 1

    def _is_stratified(self, cv):
        return isinstance(cv, GroupHoldOut)  # so that ValidSplit passes y to the group splitter

    def split(self, X, y=None, groups=None):
        """Yield one ``(train_indices, valid_indices)`` pair.

        Parameters
        ----------
        X : array-like of length n
            Only its length is used.
        y : array-like of shape (n,), optional
            Class labels, used to balance the class mix.
        groups : array-like of shape (n,), optional
            Group (sky region) of every row.

        Yields
        ------
        train, valid : ndarray of int
        """
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0 < f <= 0.5:
            raise ValueError(f"fraction must be a float in (0, 0.5], got {f!r}")
        n = _num_samples(X)
        y = None if y is None else np.asarray(to_numpy(y)).ravel()
        if y is not None and y.shape[0] != n:
            raise ValueError(f"y has {y.shape[0]} rows but X has {n}")
        if groups is not None:
            yield next(self.cv.split(np.zeros(n), y, np.asarray(to_numpy(groups)).ravel()))
            return
        warnings.warn(
            "SkyValidSplit got no groups: falling back to a random stratified validation "
            "split, which can leak neighbouring objects between internal train and valid "
            "sets. Pass groups (e.g. pipe.fit(X, y, net__groups=g)).",
            LeakyValidationWarning, stacklevel=3)
        strat = y is not None and np.unique(y).size > 1 and np.bincount(
            np.unique(y, return_inverse=True)[1]).min() >= 2
        cls = StratifiedShuffleSplit if strat else ShuffleSplit
        splitter = cls(n_splits=1, test_size=self.fraction, random_state=self.random_state)
        yield next(splitter.split(np.zeros(n), y if strat else None))

    def __call__(self, dataset, y=None, groups=None):
        """skorch ``train_split`` protocol: return ``(dataset_train, dataset_valid)``.

        With ``groups``, ``ValidSplit.__call__`` (the first split of :attr:`cv`); without,
        the warned random fallback of :meth:`split`.
        """
        if groups is not None and y is not None:
            return super().__call__(dataset, y, groups)
        train, valid = next(self.split(np.zeros(get_len(dataset)), y, groups))
        return (torch.utils.data.Subset(dataset, train),
                torch.utils.data.Subset(dataset, valid))


# --------------------------------------------------------------------------- scoring
def valid_balanced_accuracy(net, X, y):
    """Balanced accuracy of ``net`` on ``(X, y)``; NaN if ``y`` has one class.

    An :class:`skorch.callbacks.EpochScoring` scorer (signature ``(net, X, y)``).
    """
    y = np.asarray(to_numpy(y)).ravel()
    if np.unique(y).size < 2:
        return float("nan")
    return float(balanced_accuracy_score(y, net.predict(X)))


def valid_roc_auc(net, X, y):
    """ROC AUC of ``p(galaxy)`` on ``(X, y)``; NaN if ``y`` has one class.

    An :class:`skorch.callbacks.EpochScoring` scorer (signature ``(net, X, y)``).
    """
    y = np.asarray(to_numpy(y)).ravel()
    if np.unique(y).size != 2:
        return float("nan")
    return float(roc_auc_score(y, net.predict_proba(X)[:, 1]))


# --------------------------------------------------------------------------- net
@contextlib.contextmanager
def _seeded(random_state, device):
    """Seed torch inside, restoring the global RNG state afterwards."""
    if random_state is None:
        yield
        return
    devices = []
    if str(device).startswith("cuda") and torch.cuda.is_available():
        devices = [torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(random_state))
        yield


class StarGalaxyNet(NeuralNetClassifier):
    """skorch classifier for cutouts with balanced class weights, seeding and sky split.

    A :class:`skorch.NeuralNetClassifier` with these additions (all plain
    constructor parameters, so ``clone``, pickling and ``GridSearchCV`` work):

    * ``class_weight='balanced'``: in :meth:`fit` the weights
      ``n / (n_classes_present * count_c)`` are computed from ``y`` and stored
      as ``class_weight_``; the criterion (``CrossEntropyLoss``) is created with
      ``weight=class_weight_``.  ``None`` disables weighting, a dict
      ``{class: weight}`` fixes them.  An explicit ``criterion__weight`` wins.
    * ``random_state``: torch is seeded (module initialisation, shuffling,
      dropout) inside :meth:`initialize` and :meth:`fit`; the global torch RNG
      state is restored afterwards.  ``None``: no seeding.
    * ``patience``: early stopping on ``valid_loss`` restoring the best epoch's
      weights, plus ``valid_bacc`` (balanced accuracy) and ``valid_auc`` (ROC
      AUC) in the history; all only when ``train_split`` is not None.
      ``patience=None`` or ``0`` disables early stopping.
    * ``train_split`` defaults to :class:`SkyValidSplit`; pass groups with
      ``fit(X, y, groups=g)`` (``net__groups`` in a pipeline).
    * inputs are cast to float32 ``(n, C, H, W)``, targets to int64; and
      :meth:`predict_proba` returns float64 ``(n, n_classes)``.

    Parameters
    ----------
    module : type or torch.nn.Module, default=StarGalaxyCNN
    criterion : type, default=torch.nn.CrossEntropyLoss
    optimizer : type, default=torch.optim.AdamW
    lr : float, default=1e-3
    max_epochs : int, default=30
    batch_size : int, default=128
    train_split : callable or None, default=SkyValidSplit()
    class_weight : {'balanced', None} or dict, default='balanced'
    patience : int or None, default=5
    random_state : int or None, default=0
    device : str, default='cpu'
    verbose : int, default=0
    **kwargs
        Other skorch parameters (``module__width``, ``optimizer__weight_decay``, ...).

    Attributes
    ----------
    class_weight_ : ndarray of shape (n_classes,) or None
        Class weights used by the loss.
    n_channels_in_ : int or None
        Channels of the cutouts seen in :meth:`fit` (5 images, or 10 for PSF-aware input);
        builds the module when ``module__in_channels=None``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(40, 5, 9, 9)).astype("float32")
    >>> y = np.arange(40) % 2
    >>> net = StarGalaxyNet(module__width=4, max_epochs=1, train_split=None)
    >>> net.fit(X, y).predict_proba(X).shape
    (40, 2)
    """

    def __init__(self, module=StarGalaxyCNN, *args, criterion=torch.nn.CrossEntropyLoss,
                 optimizer=torch.optim.AdamW, lr=1e-3, max_epochs=30, batch_size=128,
                 train_split=SkyValidSplit(), class_weight="balanced", patience=5,
                 random_state=0, device="cpu", verbose=0, **kwargs):
        # set before skorch's __init__: _default_callbacks reads them
        self.class_weight = class_weight
        self.patience = patience
        self.random_state = random_state
        super().__init__(module, *args, criterion=criterion, optimizer=optimizer, lr=lr,
                         max_epochs=max_epochs, batch_size=batch_size, train_split=train_split,
                         device=device, verbose=verbose, **kwargs)

    # ---------------------------------------------------------------- callbacks
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Input is a 4-D cutout stack (n, bands, H, W); declaring 2-D support would be false.
        tags.input_tags.two_d_array = False
        return tags

    @property
    def _default_callbacks(self):
        callbacks = list(super()._default_callbacks)
        if self.train_split is not None:
            callbacks += [
                ("valid_bacc", EpochScoring(valid_balanced_accuracy, name="valid_bacc",
                                            lower_is_better=False)),
                ("valid_auc", EpochScoring(valid_roc_auc, name="valid_auc",
                                           lower_is_better=False)),
            ]
            if self.patience:
                callbacks.append(("early_stopping", EarlyStopping(
                    monitor="valid_loss", patience=int(self.patience), load_best=True)))
        return callbacks

    # ---------------------------------------------------------------- checks
    # stargal's own parameters, checked the scikit-learn way (stargal._validation); skorch's
    # parameters (module, lr, module__*, callbacks, ...) are validated by skorch itself
    _parameter_constraints = {
        "class_weight": [StrOptions({"balanced"}), dict, None],
        "patience": [Interval(Integral, 0, None, closed="left"), None],
        "random_state": [Integral, None],
    }
    _parameter_hints = {
        "class_weight": "class_weight must be 'balanced', None or a dict",
        "patience": "patience must be a non-negative integer or None",
        "random_state": "random_state must be an int or None",
    }

    def _check_own_params(self):
        validate_params(self)

    def _n_classes(self):
        return int(self.get_params_for("module").get("n_classes", 2))

    def _check_y(self, y):
        if y is None:
            raise ValueError("StarGalaxyNet.fit needs labels y (0 = star, 1 = galaxy)")
        y = np.asarray(to_numpy(y))
        if y.ndim != 1:
            raise ValueError(f"y must be one-dimensional, got shape {y.shape}")
        if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.all(y == np.round(y))):
            raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
        y = y.astype(np.int64)
        k = self._n_classes()
        if y.size and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"y must hold labels in 0..{k - 1}, found {np.unique(y).tolist()}")
        if np.unique(y).size < 2:
            raise ValueError(f"y must contain at least two classes, found {np.unique(y).tolist()}")
        return y

    def _class_weight(self, y):
        k = self._n_classes()
        if self.class_weight is None:
            return None
        w = np.ones(k, dtype=np.float64)
        if self.class_weight == "balanced":
            counts = np.bincount(y, minlength=k)
            present = counts > 0
            w[present] = y.size / (present.sum() * counts[present])
        else:
            for c, v in self.class_weight.items():
                if not 0 <= int(c) < k:
                    raise ValueError(f"class_weight has unknown class {c!r}")
                w[int(c)] = float(v)
        return w

    # ---------------------------------------------------------------- skorch hooks
    def initialize(self):
        """Initialise module, criterion and optimizer (seeded by ``random_state``)."""
        self._check_own_params()
        with _seeded(self.random_state, self.device):
            return super().initialize()

    def initialize_module(self):
        """Create the module; ``module__in_channels=None`` takes the channel count of ``fit``'s X.

        Before any ``fit`` (``initialize()`` by hand) the module's own default is used; ``fit``
        rebuilds the module for the data it gets.
        """
        kwargs = self.get_params_for("module")
        for key, seen in (("in_channels", "n_channels_in_"), ("n_features", "n_measured_in_")):
            if key in kwargs and kwargs[key] is None:
                n_in = getattr(self, seen, None)
                if n_in is None:
                    del kwargs[key]
                else:
                    kwargs[key] = int(n_in)
        self.module_ = self.initialized_instance(self.module, kwargs)
        return self

    def initialize_criterion(self):
        """Create the criterion, with ``weight=class_weight_`` when available."""
        kwargs = self.get_params_for("criterion")
        cw = getattr(self, "class_weight_", None)
        if cw is not None and "weight" not in kwargs:
            kwargs["weight"] = torch.as_tensor(np.asarray(cw), dtype=torch.float32)
        self.criterion_ = self.initialized_instance(self.criterion, kwargs)
        return self

    def fit(self, X, y=None, **fit_params):
        """Fit the network.

        Parameters
        ----------
        X : array-like of shape (n, C, H, W)
            Cutouts (cast to float32).
        y : array-like of shape (n,)
            Integer labels, ``0 = star``, ``1 = galaxy``.
        **fit_params
            ``groups`` (array of shape (n,)) for :class:`SkyValidSplit`; other
            entries are passed on to skorch.

        Returns
        -------
        self : StarGalaxyNet
        """
        self._check_own_params()
        y = self._check_y(y)
        if not (self.warm_start and getattr(self, "initialized_", False)):
            self.class_weight_ = self._class_weight(y)
            images, features = split_inputs(X)
            shape = getattr(images, "shape", None)
            self.n_channels_in_ = int(shape[1]) if shape is not None and len(shape) == 4 else None
            self.n_measured_in_ = None if features is None else int(features.shape[1])
        with _seeded(self.random_state, self.device):
            return super().fit(X, y, **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        """The criterion's loss; for an ensemble module in training mode (logits of shape
        ``(n, members, n_classes)``, :class:`~stargal.nets.StarGalaxyCNN` with ``members > 1``)
        every member's loss on the same batch, averaged (each member learns on its own)."""
        if isinstance(y_pred, torch.Tensor) and y_pred.ndim == 3:
            y_true = to_tensor(y_true, device=y_pred.device).repeat_interleave(y_pred.shape[1])
            return super().get_loss(y_pred.reshape(-1, y_pred.shape[-1]), y_true, X=X, training=training)
        return super().get_loss(y_pred, y_true, X=X, training=training)

    def infer(self, x, **fit_params):
        """Forward pass; ``groups`` (meant for the split) is not passed to the module."""
        fit_params.pop("groups", None)
        return super().infer(x, **fit_params)

    def get_dataset(self, X, y=None):
        """Wrap ``X`` (cast to float32 ``(n, C, H, W)``, or a dict of cutouts and measured features:
        the hybrid CNN's input) and ``y`` (int64) in a Dataset."""
        if isinstance(X, dict):
            images, features = split_inputs(X)
            X = {"images": np.asarray(images, dtype=np.float32)}
            if X["images"].ndim != 4:
                raise ValueError(f"StarGalaxyNet expects cutouts of shape (n, C, H, W), got shape {X['images'].shape}")
            if features is not None:
                X["features"] = features
            if y is not None:
                y = np.asarray(to_numpy(y)).astype(np.int64)
            return super().get_dataset(X, y)
        if not is_dataset(X):
            if isinstance(X, torch.Tensor):
                X = X.float()
            else:
                X = np.asarray(X, dtype=np.float32)
            if X.ndim != 4:
                raise ValueError(f"StarGalaxyNet expects cutouts of shape (n, C, H, W), "
                                 f"got shape {tuple(X.shape)}")
            if y is not None:
                y = np.asarray(to_numpy(y)).astype(np.int64)
        return super().get_dataset(X, y)

    def predict_proba(self, X):
        """Class probabilities, float64 of shape ``(n, n_classes)`` (softmax of logits).

        Cutout arrays are classified in eval mode, in forward passes of exactly
        :data:`PREDICT_BATCH_SIZE` rows (the last one zero-padded), straight from the array
        (no skorch Dataset/DataLoader per batch): an object's probability is the same
        whichever objects share its batch. The number of torch intra-op threads is chosen
        while predicting: the first batches are timed (two each) with the process's thread
        count, halves of it, and 1, the fastest is used (re-checked every 32 batches, as load changes) and
        the caller's setting is restored afterwards (:func:`torch_threads`). On a machine
        whose cores are busy with other work, torch's threads otherwise wait on each other.
        ``STARGAL_PREDICT_THREADS=n`` fixes the count. Datasets and tensors go through skorch.
        """
        if is_dataset(X) or isinstance(X, torch.Tensor) or not getattr(self, "initialized_", False):
            return np.asarray(super().predict_proba(X), dtype=np.float64)
        X, features = split_inputs(X)
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 4:
            raise ValueError(f"StarGalaxyNet expects cutouts of shape (n, C, H, W), got shape {X.shape}")
        n, size = len(X), PREDICT_BATCH_SIZE
        if n == 0:
            return np.asarray(super().predict_proba(X), dtype=np.float64)
        module = self.module_
        was_training = module.training
        module.eval()
        chunks = []
        candidates = _thread_candidates()
        plan, best = list(candidates), candidates[0]
        timings: dict[int, float] = {}
        try:
            with torch.inference_mode(), torch_threads(candidates[0]):
                for k, start in enumerate(range(0, n, size)):
                    batch = X[start:start + size]
                    extra = {}
                    if features is not None:
                        fb = features[start:start + size]
                        if len(fb) < size:
                            fb = np.concatenate([fb, np.zeros((size - len(fb),) + features.shape[1:], np.float32)])
                        extra["features"] = torch.as_tensor(np.ascontiguousarray(fb), device=self.device)
                    if len(batch) < size:
                        batch = np.concatenate([batch, np.zeros((size - len(batch),) + X.shape[1:], np.float32)])
                    if k % _PROBE_EVERY == 1 and len(candidates) > 1:  # batch 0 warms up, untimed
                        # each candidate is timed on two batches (one alone is too noisy under load)
                        plan, timings = [c for c in candidates for _ in range(2)], {}
                    threads = plan[0] if plan else best
                    if threads != torch.get_num_threads():
                        torch.set_num_threads(threads)
                    t0 = time.perf_counter()
                    logits = module(torch.as_tensor(batch, device=self.device), **extra)
                    proba = torch.softmax(logits, dim=-1).cpu().numpy()
                    if plan and k > 0:
                        used = plan.pop(0)
                        timings[used] = timings.get(used, 0.0) + time.perf_counter() - t0
                        if not plan:
                            best = min(timings, key=timings.get)
                    chunks.append(proba[: min(size, n - start)])
        finally:
            module.train(was_training)
        return np.concatenate(chunks).astype(np.float64)


def make_cnn_net(width=32, depth=3, dropout=0.3, lr=1e-3, weight_decay=1e-4, max_epochs=30,
                 batch_size=128, patience=5, valid_fraction=0.2, class_weight="balanced",
                 random_state=0, device=None, verbose=0, in_channels=None, n_classes=2,
                 input_size=15, members=1, hybrid=False, **kwargs):
    """The CNN as a scikit-learn classifier (:class:`StarGalaxyNet`).

    Parameters
    ----------
    width, depth, dropout, in_channels, n_classes, input_size, members
        :class:`~stargal.nets.StarGalaxyCNN` parameters (``module__*``); ``members > 1`` is an
        ensemble of that many networks (their mean probability). ``in_channels=None``
        (default): the channel count of the cutouts seen in ``fit`` (5, or 10 for PSF-aware
        cutouts).
    lr : float, default=1e-3
        AdamW learning rate.
    weight_decay : float, default=1e-4
        AdamW weight decay (``optimizer__weight_decay``).
    max_epochs, batch_size : int
        Training length and mini-batch size.
    patience : int or None, default=5
        Early-stopping patience in epochs on ``valid_loss`` (best weights restored).
    valid_fraction : float, default=0.2
        Fraction held out by :class:`SkyValidSplit` (``None``: no internal
        validation, no early stopping).
    class_weight : {'balanced', None} or dict, default='balanced'
    random_state : int or None, default=0
        Seeds torch and the validation split.
    hybrid : bool, default=False
        The module is :class:`~stargal.nets.HybridCNN` (cutouts and measured features, whose
        width ``module__n_features`` is taken from ``fit``'s data); ``members`` must be 1.
    device : str, optional
        Default ``'cuda'`` when available, else ``'cpu'``.
    verbose : int, default=0
    **kwargs
        Further skorch parameters, e.g. ``iterator_train__num_workers``.

    Returns
    -------
    StarGalaxyNet

    Examples
    --------
    >>> net = make_cnn_net(width=8, max_epochs=3)
    >>> net.module__width, type(net.train_split).__name__
    (8, 'SkyValidSplit')
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    train_split = kwargs.pop("train_split", None if valid_fraction is None else SkyValidSplit(
        fraction=valid_fraction, random_state=random_state))
    if hybrid:
        from stargal.nets import HybridCNN

        if members != 1:
            raise ValueError(f"the hybrid CNN is one network (members=1), got members={members!r}")
        module, extra = HybridCNN, {"module__n_features": None}
    else:
        module, extra = StarGalaxyCNN, {"module__members": members}
    return StarGalaxyNet(
        module=module,
        module__in_channels=in_channels, module__width=width, module__depth=depth,
        module__dropout=dropout, module__n_classes=n_classes, module__input_size=input_size,
        **extra,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.AdamW, lr=lr, optimizer__weight_decay=weight_decay,
        max_epochs=max_epochs, batch_size=batch_size, train_split=train_split,
        class_weight=class_weight, patience=patience, random_state=random_state,
        device=device, verbose=verbose, **kwargs)


# --------------------------------------------------------------------------- pipelines
class SkyPipeline(Pipeline):
    """:class:`imblearn.pipeline.Pipeline` that keeps the final step's ``groups`` aligned.

    When samplers (steps with ``fit_resample``, e.g. a cutout augmenter) change
    the rows during ``fit``, a ``groups`` fit parameter of the final step
    (``net__groups``) is re-indexed with the samplers' ``sample_indices_``
    (index of the source row of every output row), so that resampled copies
    keep their source's group.  If a sampler changed the number of rows and has
    no ``sample_indices_``, fitting fails with a clear error rather than leak.
    Otherwise identical to the imbalanced-learn pipeline.

    Examples
    --------
    >>> from imblearn.over_sampling import RandomOverSampler
    >>> from sklearn.dummy import DummyClassifier
    >>> pipe = SkyPipeline([('augment', RandomOverSampler()), ('clf', DummyClassifier())])
    >>> pipe.steps[0][0]
    'augment'
    """

    def _fit(self, X, y=None, routed_params=None, raw_params=None):
        n_in = n_rows(X)
        Xt, yt = super()._fit(X, y, routed_params=routed_params, raw_params=raw_params)
        if routed_params is not None and len(self.steps):
            self._align_groups(routed_params, n_in, n_rows(Xt))
        return Xt, yt

    def _align_groups(self, routed_params, n_in, n_out):
        name = self.steps[-1][0]
        if name not in routed_params:
            return
        index, blind = np.arange(n_in), []
        for _, step_name, step in self._iter(with_final=False, filter_passthrough=True,
                                             filter_resample=False):
            is_sampler = hasattr(step, "fit_resample") and not (
                hasattr(step, "transform") or hasattr(step, "fit_transform"))
            if not is_sampler:
                continue
            sample_indices = getattr(step, "sample_indices_", None)
            if sample_indices is None:
                blind.append(step_name)
            else:
                index = index[np.asarray(sample_indices)]
        for params in routed_params[name].values():
            groups = params.get("groups") if hasattr(params, "get") else None
            if groups is None:
                continue
            groups = np.asarray(to_numpy(groups))
            if blind:
                if groups.shape[0] != n_out:
                    raise ValueError(
                        f"step(s) {blind} changed the number of rows ({n_in} -> {n_out}) but "
                        f"expose no sample_indices_, so groups cannot follow the new rows")
                continue
            if groups.shape[0] != n_in:
                raise ValueError(f"groups has {groups.shape[0]} entries but X has {n_in} rows")
            params["groups"] = groups[index]


def _check_front(front):
    if front is None:
        return []
    steps = list(front)
    for item in steps:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError(f"front must be a list of (name, estimator) tuples, got {item!r}")
        if item[0] in _RESERVED:
            raise ValueError(f"front step name {item[0]!r} is reserved for the factory's steps")
    return steps


def make_cnn_pipeline(front=None, augmenter=None, scaler=None, psf=None, **net_params):
    """CNN pipeline: ``front + ['augment'] + ['psf'] + ['scale'] + 'net'``.

    Parameters
    ----------
    front : list of (str, estimator), optional
        Steps producing cutouts, e.g. ``[('align', Aligner()), ('cut', Cutter())]``.
        ``None``: the pipeline takes ``(n, 5, H, W)`` cutouts (``(n, 10, H, W)`` PSF-aware
        cutouts with ``psf``).
    augmenter : sampler, optional
        Step ``'augment'`` (``fit_resample``; applied during ``fit`` only).
    psf : transformer, optional
        Step ``'psf'``, e.g. :class:`~stargal.psf_channels.PSFChannels`, turning the PSF
        channels of ``Cutter(psf=True)`` cutouts into the network's PSF input (after the
        augmenter, so augmented copies are measured afresh). ``psf__mode='drop'`` makes the
        same pipeline PSF-blind; the network takes its channel count from the data.
    scaler : transformer, optional
        Step ``'scale'``, e.g. ``AsinhScaler()``.
    **net_params
        Passed to :func:`make_cnn_net`.

    Returns
    -------
    SkyPipeline
        Fit with ``pipe.fit(X, y, net__groups=groups)`` for a leak-free
        internal validation split.

    Examples
    --------
    >>> pipe = make_cnn_pipeline(width=8)
    >>> [name for name, _ in pipe.steps], pipe.get_params()['net__module__width']
    (['net'], 8)
    """
    steps = _check_front(front)
    if augmenter is not None:
        steps.append(("augment", augmenter))
    if psf is not None:
        steps.append(("psf", psf))
    if scaler is not None:
        steps.append(("scale", scaler))
    steps.append(("net", make_cnn_net(**net_params)))
    return SkyPipeline(steps)


def make_forest_pipeline(front=None, **rf_params):
    """Random-forest baseline: ``front + 'features' (PhotometricFeatures) + 'forest'``.

    Parameters
    ----------
    front : list of (str, estimator), optional
        Steps producing cutouts; ``None``: the pipeline takes cutouts.
    **rf_params
        :class:`~sklearn.ensemble.RandomForestClassifier` parameters; defaults
        ``n_estimators=300, class_weight='balanced', random_state=0, n_jobs=1``.

    Returns
    -------
    imblearn.pipeline.Pipeline

    Examples
    --------
    >>> make_forest_pipeline(n_estimators=10).get_params()['forest__n_estimators']
    10
    """
    params = dict(n_estimators=300, class_weight="balanced", random_state=0, n_jobs=1)
    params.update(rf_params)
    return Pipeline(_check_front(front) + [("features", PhotometricFeatures()),
                                           ("forest", RandomForestClassifier(**params))])


def make_measured_forest_pipeline(align, cutter, photometry, measured=True, **rf_params):
    """Random forest on aperture features *and* model-fit measurements of the same pixels.

    ``align -> features -> forest`` where ``features`` is a :class:`~sklearn.pipeline.FeatureUnion`
    of ``pixels`` (``cutter -> aperture``: :class:`~stargal.features.PhotometricFeatures`) and
    ``measured`` (``photometry -> fit``: :class:`~stargal.photo.SDSSPhotometry` then
    :class:`~stargal.features.MeasuredFeatures`). ``measured=False`` (or the pipeline parameter
    ``features__measured='drop'``) leaves the measurements out: the aperture-only forest.

    Parameters are routed the scikit-learn way: ``features__pixels__cut__size``,
    ``features__measured__photo__stamp_size``, ``forest__n_estimators``.

    Examples
    --------
    >>> from stargal.align import Aligner
    >>> from stargal.cutouts import Cutter
    >>> from stargal.photo import SDSSPhotometry
    >>> pipe = make_measured_forest_pipeline(Aligner(), Cutter(psf=True), SDSSPhotometry(), n_estimators=10)
    >>> [name for name, _ in pipe.steps], pipe.get_params()["features__measured__photo__stamp_size"]
    (['align', 'features', 'forest'], 31)
    """
    params = dict(n_estimators=300, class_weight="balanced", random_state=0, n_jobs=1)
    params.update(rf_params)
    pixels = Pipeline([("cut", cutter), ("aperture", PhotometricFeatures())])
    fitted = Pipeline([("photo", photometry), ("fit", MeasuredFeatures())])
    union = FeatureUnion([("pixels", pixels), ("measured", fitted if measured else "drop")])
    return Pipeline([("align", align), ("features", union), ("forest", RandomForestClassifier(**params))])


class InputUnion(FeatureUnion):
    """:class:`~sklearn.pipeline.FeatureUnion` whose outputs stay apart: a dict keyed by the names.

    ``InputUnion([('images', Cutter(psf=True)), ('features', measured_pipeline)])`` turns an
    aligned table into ``{'images': cutouts, 'features': (n, F) array}``, the hybrid CNN's input
    (the augmenter, PSF channels and scaler work on the images and carry the features along).
    A transformer set to ``'drop'`` (``inputs__features='drop'``) leaves its key out: without
    features the dict is just the cutout array.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import FunctionTransformer
    >>> u = InputUnion([("images", FunctionTransformer(lambda X: X * 2)), ("features", FunctionTransformer())])
    >>> out = u.fit_transform(np.ones((3, 2)))
    >>> sorted(out), out["images"][0].tolist()
    (['features', 'images'], [2.0, 2.0])
    >>> u.set_params(features="drop").fit_transform(np.ones((3, 2))).shape
    (3, 2)
    """

    def _hstack(self, Xs):
        names = [name for name, _, _ in self._iter()]
        out = {name: X for name, X in zip(names, Xs)}
        if set(out) == {"images"}:
            return out["images"]
        if "features" in out:
            out["features"] = np.asarray(out["features"], dtype=np.float32)
        return out

    def get_feature_names_out(self, input_features=None):
        """Not defined: the output is a dict of a cutout array and a feature array."""
        raise AttributeError("InputUnion's output is a dict of cutouts and features; it has no feature names")


def make_hybrid_pipeline(align, cutter, photometry, augmenter=None, scaler=None, psf=None, features=True,
                         **net_params):
    """The hybrid CNN: cutouts and model-fit measurements in one network (one skorch net).

    ``align -> inputs -> ['augment'] -> ['psf'] -> ['scale'] -> net`` with ``inputs`` an
    :class:`InputUnion` of ``images`` (``cutter``) and ``features`` (``photometry`` ->
    :class:`~stargal.features.MeasuredFeatures` -> standardised -> NaN imputed with 0, plus
    missing-value indicators); the net's module is :class:`~stargal.nets.HybridCNN`. The
    feature-blind variant is ``inputs__features='drop'`` (or ``features=False``), the PSF-blind
    one ``cutter.psf=False`` without a ``psf`` step, as for the CNN.

    Examples
    --------
    >>> from stargal.align import Aligner
    >>> from stargal.cutouts import Cutter
    >>> from stargal.photo import SDSSPhotometry
    >>> pipe = make_hybrid_pipeline(Aligner(), Cutter(psf=True), SDSSPhotometry(), width=8)
    >>> [n for n, _ in pipe.steps], pipe.get_params()["net__module"].__name__
    (['align', 'inputs', 'net'], 'HybridCNN')
    """
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    measured = Pipeline([("photo", photometry), ("fit", MeasuredFeatures()), ("standardise", StandardScaler()),
                         ("impute", SimpleImputer(strategy="constant", fill_value=0.0, add_indicator=True,
                                                  keep_empty_features=True))])
    steps = [("align", align), ("inputs", InputUnion([("images", cutter), ("features", measured if features else "drop")]))]
    if augmenter is not None:
        steps.append(("augment", augmenter))
    if psf is not None:
        steps.append(("psf", psf))
    if scaler is not None:
        steps.append(("scale", scaler))
    return SkyPipeline(steps + [("net", make_cnn_net(hybrid=True, **net_params))])


def make_rule_pipeline(front=None, **rule_params):
    """SDSS's type rule: ``front + 'rule'`` (:class:`~stargal.rule.SDSSTypeRule`).

    ``front`` ends in a :class:`~stargal.photo.SDSSPhotometry` step, e.g.
    ``[('align', Aligner()), ('photo', SDSSPhotometry())]``; ``None``: the pipeline takes the
    measurement table.

    Examples
    --------
    >>> import numpy as np
    >>> pipe = make_rule_pipeline(boundary=0.145).fit(np.array([[0.0], [0.5]]), [0, 1])
    >>> pipe.predict(np.array([[0.1], [0.3]])).tolist()
    [0, 1]
    """
    return Pipeline(_check_front(front) + [("rule", SDSSTypeRule(**rule_params))])


class Flatten(TransformerMixin, BaseEstimator):
    """Reshape ``(n, ...)`` arrays to ``(n, n_features)`` (float32 view when possible).

    Examples
    --------
    >>> import numpy as np
    >>> Flatten().fit_transform(np.zeros((2, 5, 7, 7))).shape
    (2, 245)
    """

    def fit(self, X, y=None):
        """Record the per-row shape. Returns self."""
        X = np.asarray(X)
        if X.ndim < 2:
            raise ValueError(f"expected an array of shape (n, ...), got shape {X.shape}")
        self.input_shape_ = X.shape[1:]
        return self

    def transform(self, X):
        """Return ``X.reshape(n, -1)``."""
        check_is_fitted(self, "input_shape_")
        X = np.asarray(X)
        if X.shape[1:] != self.input_shape_:
            raise ValueError(f"rows have shape {X.shape[1:]}, fitted on {self.input_shape_}")
        return X.reshape(X.shape[0], -1)


def make_majority_pipeline(front=None):
    """Majority-class baseline: ``front + 'flatten' + 'majority'`` (most frequent class).

    Parameters
    ----------
    front : list of (str, estimator), optional

    Returns
    -------
    imblearn.pipeline.Pipeline

    Examples
    --------
    >>> import numpy as np
    >>> pipe = make_majority_pipeline().fit(np.zeros((3, 5, 7, 7)), [0, 0, 1])
    >>> pipe.predict(np.zeros((2, 5, 7, 7))).tolist()
    [0, 0]
    """
    return Pipeline(_check_front(front) + [("flatten", Flatten()),
                                           ("majority", DummyClassifier(strategy="most_frequent"))])
