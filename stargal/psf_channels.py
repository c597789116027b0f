"""What the CNN is told about each field's PSF: the PSF channels of PSF-aware cutouts.

SDSS calls an object a galaxy when it is broader than *its field's* PSF, and seeing differs
from field to field (r FWHM 1.18″–1.55″ in the study, ~0.8″–2″ over the survey). A network
that sees only the image learns absolute sizes, and calls compact galaxies stars on sharp
fields. :class:`~stargal.cutouts.Cutter` with ``psf=True`` therefore appends, per band, the
field's PSF model at the object's position (:mod:`stargal.psf`) as five more channels, centred
on the central pixel and normalised to unit sum. :class:`PSFChannels` turns them into what the
network sees (``mode``):

``'scaled'`` (default)
    each band's PSF times the object's own PSF-fit flux in that band
    (:func:`stargal._imaging.psf_fit_flux`), in nanomaggies: "what this object would look like
    if it were a star". A star's image and its scaled PSF agree; a galaxy is broader. A bare unit
    PSF helped little in trials (five distinct PSFs in training are too few to learn from);
    scaling puts the comparison on the object's own brightness.
``'residual'``
    the image minus the scaled PSF: the light a point source does not explain (extent directly).
``'unit'``
    the unit-sum PSF stamps unchanged.
``'none'``
    the PSF channels are removed: the network is PSF-blind (5 channels) on the same cutouts, for
    comparisons inside one pipeline (``psf__mode``; the cutouts, and an augmenter before this
    step, still carry the PSF). ``'drop'``, its former name, is deprecated (a ``FutureWarning``;
    it does the same). A PSF-blind pipeline from the objects table, forest included, is
    ``stargal.training.build_pipeline(..., psf='none')``: no PSF stamps are cut at all.

The step sits after the augmenter, so augmented copies (including the seeing augmentation,
which broadens image and PSF with the same kernel) get their PSF-fit flux measured afresh.
Rows are never added or dropped.

Examples
--------
>>> import numpy as np
>>> X = np.zeros((2, 10, 7, 7), dtype=np.float32)
>>> X[:, 5:, 2:5, 2:5] = 1 / 9            # a 3x3 top-hat PSF in every band
>>> X[:, :5] = 4.0 * X[:, 5:]             # two stars of 4 nanomaggies
>>> Xt = PSFChannels().fit_transform(X)
>>> Xt.shape, bool(np.allclose(Xt[:, 5:], Xt[:, :5]))
((2, 10, 7, 7), True)
>>> PSFChannels(mode="none").fit_transform(X).shape
(2, 5, 7, 7)
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._imaging import N_IMAGE_BANDS, PSF_MODES, psf_fit_flux, split_psf_channels
from ._validation import StrOptions, join_inputs, split_inputs

__all__ = ["PSFChannels", "PSF_MODES"]

#: The former name of ``mode='none'`` (deprecated; accepted with a ``FutureWarning``).
_DEPRECATED_MODES = {"drop": "none"}


class PSFChannels(TransformerMixin, BaseEstimator):
    """PSF-aware cutouts ``(n, 10, H, W)`` -> image + PSF channels for the network.

    Parameters
    ----------
    mode : {'scaled', 'residual', 'unit', 'none'}, default='scaled'
        See the module docstring (:data:`PSF_MODES`; ``'drop'`` is a deprecated name of
        ``'none'``).

    Attributes
    ----------
    n_channels_out_ : int
        10, or 5 for ``mode='none'``.

    Notes
    -----
    Input: float32 ``(n, 10, H, W)`` from :class:`~stargal.cutouts.Cutter` with ``psf=True``
    (channels 0–4 images ``u, g, r, i, z`` in nanomaggies, 5–9 unit-sum PSF stamps). Output
    float32; non-finite image pixels (rows the Aligner flagged) stay non-finite in the image
    channels and give a zero-flux PSF channel.
    """

    _parameter_constraints = {
        "mode": [StrOptions(set(PSF_MODES) | set(_DEPRECATED_MODES),
                            deprecated=set(_DEPRECATED_MODES))],
    }

    def __init__(self, mode="scaled"):
        self.mode = mode

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.allow_nan = True
        return tags

    def _check_X(self, X):
        X = np.asarray(X)
        if not np.issubdtype(X.dtype, np.number):
            raise TypeError(f"PSFChannels: cutouts must be numeric, got dtype {X.dtype}")
        split_psf_channels(X, who="PSFChannels")  # raises with the expected layout
        return X

    def fit(self, X, y=None):
        """Check the parameters and the channel layout; nothing is learned.

        Parameters
        ----------
        X : array-like of shape (n, 10, H, W)
        y : ignored

        Returns
        -------
        self : PSFChannels
        """
        self._validate_params()
        self._check_X(split_inputs(X)[0])
        if self.mode in _DEPRECATED_MODES:
            warnings.warn(f"PSFChannels(mode={self.mode!r}) is deprecated; use "
                          f"mode={_DEPRECATED_MODES[self.mode]!r} (the same PSF-blind output)",
                          FutureWarning, stacklevel=2)
        self.n_channels_out_ = N_IMAGE_BANDS if self._mode() == "none" else 2 * N_IMAGE_BANDS
        return self

    def _mode(self) -> str:
        """``mode`` with a deprecated name replaced by its current one."""
        return _DEPRECATED_MODES.get(self.mode, self.mode)

    def transform(self, X):
        """The network's input channels (see ``mode``).

        Parameters
        ----------
        X : array-like of shape (n, 10, H, W)

        Returns
        -------
        ndarray of shape (n, n_channels_out_, H, W), float32
        """
        check_is_fitted(self, "n_channels_out_")
        X, features = split_inputs(X)  # measured features (hybrid CNN) pass through
        if features is not None:
            return join_inputs(self.transform(X), features)
        X = self._check_X(X)
        images, psfs = split_psf_channels(X)
        images = images.astype(np.float32, copy=False)
        mode = self._mode()
        if mode == "none":
            return np.array(images, dtype=np.float32, copy=True)
        if mode == "unit":
            return np.array(X, dtype=np.float32, copy=True)
        flux = psf_fit_flux(images, psfs).astype(np.float32)
        scaled = np.nan_to_num(psfs.astype(np.float32)) * flux[:, :, None, None]
        second = scaled if mode == "scaled" else images - scaled
        return np.concatenate([images, second], axis=1).astype(np.float32, copy=False)
