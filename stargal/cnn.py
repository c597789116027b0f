"""The torch modules of the CNN: :class:`StarGalaxyCNN` and :class:`HybridCNN`.

:class:`StarGalaxyCNN` is a small, plain PyTorch module: a stack of
``Conv3x3 -> BatchNorm -> ReLU [-> MaxPool]`` blocks, global average pooling,
dropout and a linear layer producing one logit per class (``members > 1``: an
ensemble of such networks).  :class:`HybridCNN` joins its convolution blocks with
a small MLP on measured features.  Both are wrapped for scikit-learn by
:func:`stargal.classifier.make_cnn_net` (skorch); ``stargal.nets``, their former
home, re-exports them.

Design notes
------------
* Inputs are ``(n, in_channels, H, W)`` float tensors: by default the five SDSS
  bands in the order ``u, g, r, i, z`` (``stargal.sdss.BANDS``), usually after
  :class:`stargal.scale.AsinhScaler`.  The object sits on the central pixel
  ``((W - 1) / 2, (H - 1) / 2)`` (0-based) of an odd-sized cutout.
* Max pooling uses ``ceil_mode=True`` and the head uses global average pooling,
  so the same module works for any cutout size: odd sizes ``>= 7`` are the
  intended range (``input_size`` is the nominal size and only used to check
  the architecture at construction; other sizes are accepted in ``forward``).
* Every activation is a separate, non in-place :class:`torch.nn.ReLU` module and
  no operation is in place: this is what SHAP's ``DeepExplainer`` and
  gradient-based attributions (:mod:`stargal.explain`) need.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from stargal._imaging import CUTOUT_SIZE, N_IMAGE_BANDS
from stargal.config import CNN_DEFAULTS

__all__ = ["StarGalaxyCNN", "HybridCNN"]


class StarGalaxyCNN(nn.Module):
    """Small CNN mapping ``(n, C, H, W)`` cutouts to ``(n, n_classes)`` logits.

    Block ``k`` (``k = 0 .. depth - 1``) is ``Conv2d(3x3, padding=1) ->
    BatchNorm2d -> ReLU`` with ``width * 2**k`` output channels, followed by
    ``MaxPool2d(2, ceil_mode=True)`` for every block except the last.  The head
    is ``AdaptiveAvgPool2d(1) -> Flatten -> Dropout(dropout) -> Linear``.
    Defaults named ``CNN_DEFAULTS[...]`` are the packaged study's ``[cnn]`` settings
    (:data:`stargal.config.CNN_DEFAULTS`).

    Parameters
    ----------
    in_channels : int, default=N_IMAGE_BANDS
        Number of input channels (the five bands ``u, g, r, i, z``; 10 with PSF channels).
    width : int, default=CNN_DEFAULTS["width"]
        Channels of the first block; doubled after every block.
    depth : int, default=CNN_DEFAULTS["depth"]
        Number of convolutional blocks (``>= 1``).
    dropout : float, default=CNN_DEFAULTS["dropout"]
        Dropout probability before the linear layer, in ``[0, 1)``.
    n_classes : int, default=2
        Number of output logits (``0 = star``, ``1 = galaxy``).
    input_size : int, default=CUTOUT_SIZE
        Nominal cutout side in pixels (odd, ``>= 7``).  The network itself is
        size-agnostic; this value is validated and reported by
        :meth:`feature_map_size`.
    members : int, default=CNN_DEFAULTS["members"]
        ``> 1``: an ensemble of that many such networks (``towers``), each with
        its own initial weights and its own loss during training
        (:meth:`stargal.classifier.StarGalaxyNet.get_loss`), averaged in probability
        at prediction. Costs ``members`` times the compute.

    Examples
    --------
    >>> import torch
    >>> net = StarGalaxyCNN(width=8, depth=2)
    >>> net(torch.zeros(4, 5, 15, 15)).shape
    torch.Size([4, 2])
    >>> net(torch.zeros(1, 5, 7, 7)).shape
    torch.Size([1, 2])
    >>> pair = StarGalaxyCNN(width=8, depth=2, members=2).eval()
    >>> p = torch.softmax(pair(torch.zeros(3, 5, 9, 9)), dim=-1)
    >>> mean = torch.stack([torch.softmax(t(torch.zeros(3, 5, 9, 9)), -1) for t in pair.towers]).mean(0)
    >>> bool(torch.allclose(p, mean, atol=1e-6))
    True
    """

    def __init__(self, in_channels=N_IMAGE_BANDS, width=CNN_DEFAULTS["width"], depth=CNN_DEFAULTS["depth"],
                 dropout=CNN_DEFAULTS["dropout"], n_classes=2, input_size=CUTOUT_SIZE,
                 members=CNN_DEFAULTS["members"]):
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 1), ("width", width, 1),
                                 ("depth", depth, 1), ("n_classes", n_classes, 2),
                                 ("input_size", input_size, 7), ("members", members, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if input_size % 2 != 1:
            raise ValueError(f"input_size must be odd (the object sits on the central pixel), "
                             f"got {input_size}")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        self.in_channels = in_channels
        self.width = width
        self.depth = depth
        self.dropout = float(dropout)
        self.n_classes = n_classes
        self.input_size = input_size
        self.members = members
        if members > 1:
            # an ensemble: independent single networks, each with its own initial weights
            self.towers = nn.ModuleList([
                StarGalaxyCNN(in_channels, width, depth, dropout, n_classes, input_size)
                for _ in range(members)])
            self.n_features = self.towers[0].n_features
            return

        layers = []
        channels = in_channels
        for k in range(depth):
            out = width * 2 ** k
            layers += [
                nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=False),
            ]
            if k < depth - 1:
                layers.append(nn.MaxPool2d(kernel_size=2, ceil_mode=True))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.drop = nn.Dropout(p=self.dropout, inplace=False)
        self.classifier = nn.Linear(channels, n_classes)
        self.n_features = channels

    def feature_map_size(self, size=None):
        """Spatial side of the last feature map for a ``size x size`` input.

        Parameters
        ----------
        size : int, optional
            Cutout side in pixels; defaults to ``input_size``.

        Returns
        -------
        int
        """
        size = self.input_size if size is None else int(size)
        for _ in range(self.depth - 1):
            size = -(-size // 2)  # ceil_mode pooling
        return size

    def forward(self, X):
        """Return class logits.

        Parameters
        ----------
        X : torch.Tensor of shape (n, in_channels, H, W)
            Float cutouts.

        Returns
        -------
        torch.Tensor of shape (n, n_classes)
            Unnormalised logits (apply ``softmax`` for probabilities). With ``members > 1``:
            in eval mode the log of the members' mean probability (so ``softmax`` gives the
            ensemble's probability); in training mode every member's logits,
            ``(n, members, n_classes)``.
        """
        if X.ndim != 4 or X.shape[1] != self.in_channels:
            raise ValueError(
                f"expected cutouts of shape (n, {self.in_channels}, H, W), got {tuple(X.shape)}")
        if self.members > 1:
            logits = torch.stack([tower(X) for tower in self.towers], dim=1)  # (n, members, classes)
            if self.training:
                return logits  # every tower is trained on its own loss (StarGalaxyNet.get_loss)
            # log of the members' mean probability: its softmax is the ensemble's probability
            return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=1) - math.log(self.members)
        h = self.features(X)
        h = self.flatten(self.pool(h))
        return self.classifier(self.drop(h))


class HybridCNN(nn.Module):
    """Cutouts *and* measured features -> logits: an image branch and a feature branch, joined.

    The image branch is :class:`StarGalaxyCNN`'s convolution blocks and global pooling; the
    feature branch a small MLP (``Linear(n_features, feature_width) -> ReLU -> Linear -> ReLU``)
    on the model-fit measurements (:class:`stargal.features.MeasuredFeatures`, standardised, NaN
    imputed); the two are concatenated before ``Dropout -> Linear``. ``forward(images,
    features=None)``: without features (the feature-blind variant) the branch gets zeros, so one
    architecture serves both and the study can show what the measurements add.

    Parameters
    ----------
    in_channels : int, default=2 * N_IMAGE_BANDS
        Channels of the cutouts (the five bands and their PSF channels).
    width, depth, dropout, n_classes, input_size
        As :class:`StarGalaxyCNN`.
    n_features : int, default=48
        Width of the feature input.
    feature_width : int, default=32
        Hidden width of the feature branch.

    Examples
    --------
    >>> import torch
    >>> net = HybridCNN(in_channels=10, width=8, depth=2, n_features=6)
    >>> net(torch.zeros(3, 10, 15, 15), torch.zeros(3, 6)).shape
    torch.Size([3, 2])
    >>> net(torch.zeros(3, 10, 15, 15)).shape
    torch.Size([3, 2])
    """

    def __init__(self, in_channels=2 * N_IMAGE_BANDS, width=CNN_DEFAULTS["width"], depth=CNN_DEFAULTS["depth"],
                 dropout=CNN_DEFAULTS["dropout"], n_classes=2, input_size=CUTOUT_SIZE, n_features=48,
                 feature_width=32):
        super().__init__()
        for name, value in (("n_features", n_features), ("feature_width", feature_width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        image = StarGalaxyCNN(in_channels, width, depth, dropout, n_classes, input_size)
        self.in_channels, self.n_features, self.n_classes = in_channels, n_features, n_classes
        self.features = image.features
        self.pool = image.pool
        self.flatten = nn.Flatten()
        self.measured = nn.Sequential(nn.Linear(n_features, feature_width), nn.ReLU(),
                                      nn.Linear(feature_width, feature_width), nn.ReLU())
        self.drop = nn.Dropout(p=float(dropout), inplace=False)
        self.classifier = nn.Linear(image.n_features + feature_width, n_classes)

    def forward(self, images, features=None):
        """Class logits ``(n, n_classes)`` from ``images`` (n, C, H, W) and ``features`` (n, F)."""
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected cutouts of shape (n, {self.in_channels}, H, W), got {tuple(images.shape)}")
        if features is None:
            features = images.new_zeros((images.shape[0], self.n_features))
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(f"expected features of shape (n, {self.n_features}), got {tuple(features.shape)}")
        h = self.flatten(self.pool(self.features(images)))
        return self.classifier(self.drop(torch.cat([h, self.measured(features)], dim=1)))
