"""The CNN as a scikit-learn classifier: :class:`StarGalaxyNet` (skorch) and :func:`make_cnn_net`.

* :class:`StarGalaxyNet`: a :class:`skorch.NeuralNetClassifier` for ``(n, C, H, W)`` cutouts
  (or the hybrid CNN's dict of cutouts and measured features) with class-weighted loss, seeding,
  early stopping on held-out sky groups, and prediction in fixed-size batches on a probed
  thread count (:class:`stargal._threads.ThreadProbe`);
* :class:`SkyValidSplit`: its internal train/valid split by sky groups, and
  :class:`LeakyValidationWarning` when it has none;
* :func:`valid_balanced_accuracy`, :func:`valid_roc_auc`: the scorers of its history;
* :func:`make_cnn_net`: the network with the study's defaults (``module__*`` routing).

The pipelines around it are in :mod:`stargal.pipelines`, the torch modules in :mod:`stargal.cnn`.

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
rows during ``fit``, :class:`stargal.pipelines.SkyPipeline` re-aligns ``groups``
with the new rows through the sampler's ``sample_indices_`` (the source row of
every output row, the imbalanced-learn convention), so an augmented copy always
stays in its source object's group.  Without groups the split falls back to a
stratified random split and warns.
"""

from __future__ import annotations

import contextlib
import numbers
import warnings

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from skorch import NeuralNetClassifier
from skorch.callbacks import EarlyStopping, EpochScoring
from skorch.dataset import ValidSplit, get_len
from skorch.utils import is_dataset, to_numpy, to_tensor

from stargal._imaging import CUTOUT_SIZE
from stargal._threads import ThreadProbe
from stargal._validation import (Integral, Interval, StrOptions, num_samples, split_inputs,
                                 validate_params)
from stargal.cnn import HybridCNN, StarGalaxyCNN
from stargal.config import CNN_DEFAULTS
from stargal.split import GroupHoldOut

__all__ = [
    "StarGalaxyNet",
    "SkyValidSplit",
    "LeakyValidationWarning",
    "valid_balanced_accuracy",
    "valid_roc_auc",
    "make_cnn_net",
    "PREDICT_BATCH_SIZE",
]

#: Rows per forward pass when :class:`StarGalaxyNet` predicts. Every pass has exactly this many
#: rows (the last batch is zero-padded), so an object's probability never depends on which
#: other objects share its batch: torch's CPU kernels pick their code path by batch shape,
#: and one shape means one path (bit-for-bit equal results alone or in a crowd).
PREDICT_BATCH_SIZE = 512


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
        n = num_samples(X)
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
    lr : float, default=CNN_DEFAULTS["lr"]
    max_epochs : int, default=CNN_DEFAULTS["max_epochs"]
    batch_size : int, default=CNN_DEFAULTS["batch_size"]
    train_split : callable or None, default=SkyValidSplit()
    class_weight : {'balanced', None} or dict, default='balanced'
    patience : int or None, default=CNN_DEFAULTS["patience"]
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
                 optimizer=torch.optim.AdamW, lr=CNN_DEFAULTS["lr"], max_epochs=CNN_DEFAULTS["max_epochs"],
                 batch_size=CNN_DEFAULTS["batch_size"], train_split=SkyValidSplit(), class_weight="balanced",
                 patience=CNN_DEFAULTS["patience"],
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
        ``(n, members, n_classes)``, :class:`~stargal.cnn.StarGalaxyCNN` with ``members > 1``)
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

        Cutout arrays (and the hybrid CNN's dict of cutouts and features) are classified in
        eval mode, in forward passes of exactly :data:`PREDICT_BATCH_SIZE` rows (the last one
        zero-padded), straight from the array (no skorch Dataset/DataLoader per batch): an
        object's probability is the same whichever objects share its batch. The number of torch
        intra-op threads is chosen while predicting by a :class:`~stargal._threads.ThreadProbe`
        (``STARGAL_PREDICT_THREADS=n`` fixes it); the caller's setting and the module's
        training mode are restored afterwards. Datasets and tensors go through skorch.
        """
        if is_dataset(X) or isinstance(X, torch.Tensor) or not getattr(self, "initialized_", False):
            return np.asarray(super().predict_proba(X), dtype=np.float64)
        images, features = split_inputs(X)
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4:
            raise ValueError(f"StarGalaxyNet expects cutouts of shape (n, C, H, W), got shape {images.shape}")
        n, size = len(images), PREDICT_BATCH_SIZE
        if n == 0:
            return np.asarray(super().predict_proba(images), dtype=np.float64)
        probe = ThreadProbe()
        module = self.module_
        was_training = module.training
        module.eval()
        chunks = []
        try:
            with torch.inference_mode(), probe:
                for start in range(0, n, size):
                    extra = {}
                    if features is not None:
                        extra["features"] = torch.as_tensor(
                            np.ascontiguousarray(_padded(features[start:start + size], size)), device=self.device)
                    batch = _padded(images[start:start + size], size)
                    with probe.timed():
                        logits = module(torch.as_tensor(batch, device=self.device), **extra)
                        proba = torch.softmax(logits, dim=-1).cpu().numpy()
                    chunks.append(proba[: min(size, n - start)])
        finally:
            module.train(was_training)
        return np.concatenate(chunks).astype(np.float64)


def _padded(rows, size):
    """``rows`` with float32 zero rows appended up to ``size`` rows (unchanged if it has them)."""
    if len(rows) < size:
        rows = np.concatenate([rows, np.zeros((size - len(rows),) + rows.shape[1:], np.float32)])
    return rows


def make_cnn_net(width=CNN_DEFAULTS["width"], depth=CNN_DEFAULTS["depth"], dropout=CNN_DEFAULTS["dropout"],
                 lr=CNN_DEFAULTS["lr"], weight_decay=CNN_DEFAULTS["weight_decay"],
                 max_epochs=CNN_DEFAULTS["max_epochs"], batch_size=CNN_DEFAULTS["batch_size"],
                 patience=CNN_DEFAULTS["patience"], valid_fraction=0.2, class_weight="balanced",
                 random_state=0, device=None, verbose=0, in_channels=None, n_classes=2,
                 input_size=CUTOUT_SIZE, members=CNN_DEFAULTS["members"], hybrid=False, **kwargs):
    """The CNN as a scikit-learn classifier (:class:`StarGalaxyNet`).

    Every setting of the study's ``[cnn]`` table is a parameter here, and its default is the
    packaged study's value (:data:`stargal.config.CNN_DEFAULTS`, written ``CNN_DEFAULTS[...]``
    below).

    Parameters
    ----------
    width, depth, dropout, in_channels, n_classes, input_size, members
        :class:`~stargal.cnn.StarGalaxyCNN` parameters (``module__*``), with its defaults;
        ``members > 1`` is an ensemble of that many networks (their mean probability).
        ``in_channels=None`` (default): the channel count of the cutouts seen in ``fit`` (5,
        or 10 for PSF-aware cutouts).
    lr : float, default=CNN_DEFAULTS["lr"]
        AdamW learning rate.
    weight_decay : float, default=CNN_DEFAULTS["weight_decay"]
        AdamW weight decay (``optimizer__weight_decay``).
    max_epochs, batch_size : int, default=CNN_DEFAULTS[...]
        Training length and mini-batch size.
    patience : int or None, default=CNN_DEFAULTS["patience"]
        Early-stopping patience in epochs on ``valid_loss`` (best weights restored).
    valid_fraction : float, default=0.2
        Fraction held out by :class:`SkyValidSplit` (``None``: no internal
        validation, no early stopping).
    class_weight : {'balanced', None} or dict, default='balanced'
    random_state : int or None, default=0
        Seeds torch and the validation split.
    hybrid : bool, default=False
        The module is :class:`~stargal.cnn.HybridCNN` (cutouts and measured features, whose
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
