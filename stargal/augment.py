"""Training-time augmentation of multi-band cutouts.

:class:`CutoutAugmenter` is an imbalanced-learn style *sampler*: it exposes
``fit_resample(X, y)`` (and no ``transform``), so inside an
:class:`imblearn.pipeline.Pipeline` it runs while the pipeline is being fitted
and is skipped by ``predict``, ``predict_proba``, ``score`` and ``transform``.
It returns the original cutouts (first, in their original order) followed by
randomly perturbed copies of them.

Cutouts are ``float32`` arrays of shape ``(n, 5, H, W)`` in nanomaggies, band
order ``u, g, r, i, z``, with ``H == W`` odd so that the object sits on the
centre pixel ``((H - 1) / 2, (W - 1) / 2)`` (0-based ``(row, column)``).
Every geometric operation is applied identically to all bands of a cutout.

**PSF-aware cutouts** (``Cutter(psf=True)``) have 10 channels: 0-4 the images
``u, g, r, i, z`` in nanomaggies, 5-9 the field's PSF in the same bands at the
object's position, centred on the central pixel, unit sum over the stamp (see
:mod:`stargal._imaging`). Any input with exactly ``2 * 5`` channels is treated
as PSF-aware. Every technique then keeps image and PSF consistent: geometric
ones move both alike, ``blur`` and ``seeing`` convolve both with the same
kernel, and noise (``noise``, and the sky-noise restoration of ``seeing``) goes
to the image channels only.

Techniques (see :data:`TECHNIQUES`):

``dihedral``
    one of the 8 rotations/reflections of the square, chosen at random per
    copy. Exact (a permutation of pixels): fluxes are unchanged and the
    centre pixel stays the centre pixel.
``shift``
    sub-pixel translation by ``U(-shift, shift)`` pixels along each axis
    (cubic spline interpolation, ``mode='nearest'`` at the edges).
``zoom`` / ``shear``
    isotropic scaling by ``1 + U(-zoom, zoom)`` and a shear of strength
    ``U(-shear, shear)`` along a random direction, both about the centre pixel
    (one :func:`scipy.ndimage.affine_transform` together with ``shift``; the
    result is multiplied by the Jacobian so total flux is approximately
    conserved).
``blur``
    extra Gaussian PSF of sigma ``U(0, blur)`` pixels (same for all bands),
    as a discrete Gaussian kernel whose variance is exactly ``sigma**2``.
    Image channels use ``mode='nearest'`` at the edges; on PSF-aware input the
    PSF channels get the same kernel (zero padding, then rescaled to their
    input sum), so the PSF the model is shown stays the image's PSF. On
    5-channel input the model is not told the PSF changed. ``blur`` also
    smooths the sky noise and does not restore it (``seeing`` does).
``noise``
    additive Gaussian noise of standard deviation ``noise * sky_noise_[band]``
    where ``sky_noise_`` is measured from the training cutouts (see
    :func:`sky_noise`); PSF channels (``sky_noise_ == 0`` there) get none.
``seeing``
    PSF-aware input only: broaden the r-band seeing towards a random FWHM of
    up to ``seeing`` arcsec, convolving image *and* PSF channels with the same
    Gaussian kernel and restoring the image's sky noise level (see
    :class:`CutoutAugmenter` for the recipe and its limits).

Order of operations for one copy: affine (shift/zoom/shear) -> blur -> seeing
-> dihedral -> noise.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(0.0, 0.01, size=(6, 5, 15, 15)).astype(np.float32)
>>> y = np.array([0, 0, 0, 0, 1, 1])
>>> aug = CutoutAugmenter(n_copies=2, random_state=0)
>>> X_res, y_res = aug.fit_resample(X, y)
>>> X_res.shape, X_res.dtype, bool(np.array_equal(X_res[:6], X))
((18, 5, 15, 15), dtype('float32'), True)
>>> X_bal, y_bal = CutoutAugmenter(balance=True, random_state=0).fit_resample(X, y)
>>> np.bincount(y_bal).tolist()
[8, 8]

PSF-aware cutouts (stars of FWHM 3 px = 1.19" here) broadened towards 2" seeing:

>>> yy, xx = np.mgrid[:15, :15] - 7.0
>>> psf = np.exp(-(xx**2 + yy**2) / (2 * (3.0 / FWHM_PER_SIGMA) ** 2))
>>> psf = np.tile(psf / psf.sum(), (6, 5, 1, 1))
>>> Xp = np.concatenate([10.0 * psf + rng.normal(0.0, 0.01, psf.shape), psf], axis=1)
>>> seeing_only = CutoutAugmenter(dihedral=False, shift=0.0, noise=0.0, seeing=2.0, random_state=0)
>>> Xs, _ = seeing_only.fit_resample(Xp, y)
>>> r = psf_fwhm(Xs[6:])[:, 2]  # r-band PSF FWHM of the copies, arcsec
>>> bool(((r > 1.18) & (r < 2.0)).all()), np.allclose(Xs[6:, 5:].sum(axis=(2, 3)), 1.0)
(True, True)

The statistics the sampler measures (:func:`sky_noise`, :func:`psf_fwhm`) live in
:mod:`stargal._imaging` (``cutout_sky_noise``, ``psf_channels_moment_fwhm``) and are importable
from here; the kernels and geometric transforms in :mod:`stargal._transforms`.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import type_of_target

from ._imaging import (FWHM_PER_SIGMA, N_IMAGE_BANDS, SDSS_TYPE_RATIO, border_median,
                       moment_fwhm, point_source_ratio)
from ._imaging import cutout_sky_noise as sky_noise
from ._imaging import psf_channels_moment_fwhm as psf_fwhm
from ._transforms import (BLOCK, affine, convolve_batch, convolve_psf_batch, dihedral,
                          gaussian_kernels, gaussian_matrices, kernel_matrices, noise_variance_factors)
from ._validation import (HasMethods, Integral, InvalidParameterError, Interval, Real, StrOptions,
                          check_cutouts, join_inputs, split_inputs, validate_params)
from .sdss import BANDS, PIXEL_SCALE_ARCSEC

__all__ = [
    "TECHNIQUES",
    "DEFAULT_STRENGTHS",
    "CutoutAugmenter",
    "sky_noise",
    "psf_fwhm",
    "SEEING_LABELS",
    "SEEING_BANDS",
    "NOISE_LABELS",
    "SDSS_TYPE_RATIO",
]

#: Names of the augmentation techniques, in the order they are documented.
#: Each is a constructor parameter of :class:`CutoutAugmenter`.
TECHNIQUES: tuple[str, ...] = ("dihedral", "shift", "zoom", "shear", "blur", "noise", "seeing")

#: A typical strength of each technique switched on (``dihedral`` is a flag; the others are in
#: pixels, relative units, multiples of the sky noise or, for ``seeing``, arcsec, as documented on
#: :class:`CutoutAugmenter`): the study's ablation uses these.
DEFAULT_STRENGTHS: dict[str, bool | float] = {
    "dihedral": True,
    "shift": 0.5,
    "zoom": 0.1,
    "shear": 0.1,
    "blur": 0.5,
    "noise": 1.0,
    "seeing": 2.0,
}

#: Channel of the r-band PSF in PSF-aware cutouts (``seeing`` measures this one).
_R_PSF = N_IMAGE_BANDS + BANDS.index("r")

#: Values of ``seeing_labels``.
SEEING_LABELS = ("consistent", "keep")

#: Values of ``seeing_bands``.
SEEING_BANDS = ("same", "independent")

#: Values of ``noise_labels``.
NOISE_LABELS = ("keep", "consistent")


def _check_target(y, n: int, who: str) -> np.ndarray:
    if y is None:
        raise ValueError(f"{who}: y is required (1 = galaxy, 0 = star)")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(f"{who}: y must be 1-D of length n_samples, got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"{who}: X has {n} cutouts but y has {y.shape[0]} labels")
    kind = type_of_target(y)
    if kind != "binary":
        raise ValueError(
            f"{who}: y must be a binary class label (1 = galaxy, 0 = star), "
            f"got target type {kind!r}"
        )
    return y


class CutoutAugmenter(BaseEstimator):
    """Add randomly augmented copies of cutouts while a pipeline is fitted.

    An imbalanced-learn sampler (``fit_resample``, no ``transform``): inside
    :class:`imblearn.pipeline.Pipeline` it acts only during ``fit``; at
    prediction time the pipeline skips it, so predictions are made on the
    untouched cutouts. It does not work inside a plain
    :class:`sklearn.pipeline.Pipeline` (which requires ``transform``).

    Parameters
    ----------
    n_copies : int, default=1
        Augmented copies per input cutout (``>= 0``).
    dihedral : bool, default=True
        Apply one of the 8 rotations/reflections (uniformly at random) to
        each copy.
    shift : float, default=0.5
        Maximum sub-pixel shift in pixels; each axis is shifted by
        ``U(-shift, shift)``. ``0`` disables.
    noise : float, default=1.0
        Standard deviation of added Gaussian noise in units of the band's sky
        noise ``sky_noise_``. ``0`` disables. PSF channels of PSF-aware input
        get none.
    zoom : float, default=0.0
        Maximum relative zoom: scale factor ``U(1 - zoom, 1 + zoom)`` about the
        centre pixel, ``0 <= zoom < 1``. ``0`` disables.
    shear : float, default=0.0
        Maximum shear strength ``g``: the image is sheared by
        ``I + g a b^T`` (``a``, ``b`` orthogonal unit vectors at a random
        angle, determinant 1) about the centre. ``0`` disables.
    blur : float, default=0.0
        Maximum extra Gaussian PSF sigma in pixels, drawn from ``U(0, blur)``
        per copy; the discrete Gaussian kernel ``exp(-s^2) I_n(s^2)`` adds
        exactly ``s^2`` to the image variance per axis even for sub-pixel
        ``s``. ``0`` disables. On PSF-aware input the PSF channels are
        convolved with the same kernel (so image and PSF stay consistent); the
        sky noise is smoothed and not restored.
    seeing : float, default=0.0
        Maximum r-band seeing FWHM in **arcsec** (SDSS pixels are
        :data:`stargal.sdss.PIXEL_SCALE_ARCSEC` = 0.396") to broaden copies towards; needs
        PSF-aware cutouts (10 channels, ``Cutter(psf=True)``). Each copy's
        r FWHM is drawn from ``U(current, max(current, seeing))``, so copies
        of fields with seeing already at least ``seeing`` stay as they are.
        ``0`` disables; a value > 0 on 5-channel input is a ``ValueError``.
        See *Seeing augmentation* below.
    seeing_labels : {'consistent', 'keep'}, default='consistent'
        SDSS's label is relative to the PSF: broadened enough, a compact galaxy
        is a point source by SDSS's own rule, i.e. a star at that seeing.
        ``'consistent'``: a galaxy's copy that ``seeing`` turns point-like by
        that rule, measured on the copy before and after broadening
        (:func:`stargal._imaging.point_source_ratio` crossing
        :data:`SDSS_TYPE_RATIO`), is not added (``n_seeing_dropped_`` counts
        them; with ``balance=True`` the classes can then end a few rows apart).
        ``'keep'``: every copy keeps its label (the behaviour before this
        option existed).
    seeing_bands : {'same', 'independent'}, default='same'
        ``'same'``: one kernel per copy, chosen to reach the drawn r FWHM, in
        every band (the band-to-band FWHM ratios move towards 1).
        ``'independent'``: each band draws its own target FWHM from
        ``U(current_b, max(current_b, seeing))`` and gets its own kernel, so the
        copies also show band-to-band seeing differences the training fields
        lack (e.g. 7264-3-111, whose g FWHM is 1.20x its r FWHM, against
        0.96-1.13x elsewhere). The PSF channel of each band always gets its
        image's kernel.
    noise_labels : {'keep', 'consistent'}, default='keep'
        The same question for ``noise``: observed shallower, a faint galaxy's
        extended light can drown in the noise, and SDSS would type it a star at
        that depth. ``'consistent'`` (PSF-aware input only; 5-channel input keeps
        every copy): a galaxy's copy that the added noise turns point-like by the
        same rule, measured before and after the noise, is not added
        (``n_noise_dropped_``). ``'keep'``: every copy keeps its label.
    balance : bool, 'smote' or imblearn sampler, default=False
        ``True``: the minority class gets extra augmented copies (of its
        cutouts, cycled in random order) so both classes end with the same
        count. ``'smote'`` or a sampler instance (anything with
        ``fit_resample``, e.g. ``RandomOverSampler()``): the sampler is cloned
        and applied to the *original* cutouts flattened to
        ``(n, bands * H * W)``, its output reshaped back; then every row
        (including the synthetic ones) gets ``n_copies`` augmented copies.
        If the sampler's ``random_state`` is ``None`` it is seeded from this
        augmenter's ``random_state``. On PSF-aware input SMOTE interpolates
        the PSF channels too (a convex combination of unit-sum PSFs still has
        unit sum).
    random_state : int, RandomState instance or None, default=None
        Seed for all random draws. Each technique draws from its own
        independent stream, so switching one technique on or off does not
        change the draws of the others.

    Attributes
    ----------
    sky_noise_ : ndarray of shape (n_bands,)
        Per-channel sky noise in nanomaggies measured from the cutouts passed
        to ``fit``/``fit_resample`` (see :func:`sky_noise`). Used by ``noise``
        and ``seeing``. On PSF-aware input it has all 10 entries (so it lines
        up with the channels): the image channels' noise, then ``0`` for the
        five noise-free PSF channels.
    psf_aware_ : bool
        Whether the input had ``2 * 5`` channels (images, then PSFs).
    n_bands_in_ : int
        Number of bands (channels) seen during fit.
    cutout_shape_ : tuple of int
        ``(H, W)`` seen during fit.
    n_seeing_dropped_ : int
        Set by ``fit_resample``: galaxy copies left out by
        ``seeing_labels='consistent'`` (0 without ``seeing``).
    n_noise_dropped_ : int
        Set by ``fit_resample``: further galaxy copies left out by
        ``noise_labels='consistent'``.
    sampler_ : estimator or None
        The fitted clone of ``balance`` when it is a sampler, else ``None``.

    Notes
    -----
    The output of ``fit_resample`` is ``[originals; copy 1 of every row; ...;
    copy n_copies of every row; extra minority copies]`` with ``y`` to match
    (with a sampler, the rows it adds sit right after the originals and are
    augmented too). Output is always ``float32``. ``sky_noise_`` is
    re-measured on every call, so the noise level always follows the data
    being augmented. No ``n_features_in_`` is set: inputs are 4-D.

    **Seeing augmentation.** SDSS calls an object a galaxy when it is broader
    than its field's PSF, and the training fields span little seeing; with
    PSF-aware cutouts the model sees each cutout's PSF, and ``seeing`` shows
    it many more. For each copy (after shift/zoom/shear and ``blur``):

    1. measure the current r FWHM from the copy's r PSF channel by second
       moments, ``F0 = 2.3548 sqrt((Mxx + Myy) / 2)`` pixels (:func:`psf_fwhm`);
    2. draw a target ``F1 ~ U(F0, max(F0, seeing / 0.396))`` pixels;
    3. convolve all 10 channels with the same discrete Gaussian kernel
       (exact variance) of ``sigma_k = sqrt(F1^2 - F0^2) / 2.3548`` pixels.
       Gaussian convolution adds ``sigma_k^2`` to ``Mxx`` and ``Myy``, so the
       r PSF's moment FWHM becomes ``F1`` and the image's sources are
       broadened exactly like the PSF. PSF channels: zero padding, then
       rescaled to their input sum (unit sum for ``Cutter(psf=True)``).
       Image channels: zero padding about each band's local sky (border
       median), i.e. outside the stamp is taken to be noise-free sky, so a
       star's image and its PSF channel get identical treatment;
    4. restore the sky noise. White noise of per-pixel sigma ``s`` convolved
       with a unit-sum kernel ``K`` has variance ``s^2 sum(K^2)``; for the
       separable ``K = k k^T``, ``sum(K^2) = (sum_i k_i^2)^2``, so the noise
       sigma is multiplied by ``f = sum_i k_i^2`` (the 1-D kernel's sum of
       squares; ``~ 1 / (2 sqrt(pi) sigma_k)`` for ``sigma_k >~ 1``). Adding
       independent Gaussian noise of sigma ``s sqrt(1 - f^2)`` restores the
       variance ``s^2``. Near the edges only the taps inside the stamp count,
       ``f^2(r, c) = G(r) G(c)`` with ``G(j) = sum_{j' in stamp} k_{j-j'}^2``;
       the restoration uses that per-pixel ``f``, so the border (where
       :func:`sky_noise` measures) is right too. ``s = sky_noise_[band]``
       (times ``blur``'s interior factor when ``blur`` is also on, so
       ``seeing`` leaves the noise level it finds).

    What this does not capture: the restored noise has the right per-pixel
    variance but is not white (a fraction ``f^2`` of the variance is the
    smoothed original, correlated over ~``sigma_k``; ``f^2 ~ 0.4`` for
    ``sigma_k = 0.5`` px, ``< 0.08`` for ``sigma_k > 1`` px); only the sky
    noise is restored, so bright objects' own photon noise ends up slightly
    too smooth; seeing only gets worse, never better, than a field's own (the
    copies span ``[F0, seeing]``); the PSF's profile becomes more Gaussian
    than a real worse-seeing PSF (its moments are right, its wings are not
    re-modelled); light scattered out of the stamp is lost (the PSF is
    rescaled to its sum, the image is not: as for a real stamp) and light of
    neighbours outside it does not scatter in. The target is reached in r
    only: the other bands get the *same* kernel, so their moment FWHMs become
    ``sqrt(F_b^2 + F1^2 - F0^2)`` and their ratio to r moves towards 1 (real
    seeing keeps roughly ``F_b / F_r ~ (lambda_b / lambda_r)^-0.2``; e.g. g/r
    1.07 at 1.4" becomes ~1.04 at 2"). The FWHM is a second-moment size of
    the stamp, not a profile fit (see :func:`psf_fwhm`).

    Examples
    --------
    >>> import numpy as np
    >>> from imblearn.pipeline import Pipeline
    >>> from sklearn.preprocessing import FunctionTransformer
    >>> from sklearn.linear_model import LogisticRegression
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(0.0, 0.01, size=(20, 5, 15, 15)).astype(np.float32)
    >>> y = np.arange(20) % 2
    >>> flat = FunctionTransformer(lambda a: a.reshape(len(a), -1))
    >>> pipe = Pipeline([("aug", CutoutAugmenter(n_copies=3, random_state=0)),
    ...                  ("flat", flat), ("clf", LogisticRegression())])
    >>> pipe.fit(X, y).predict(X).shape  # augmenter skipped at predict time
    (20,)
    """

    _estimator_type = "sampler"
    _sampling_type = "over-sampling"

    def __init__(
        self,
        n_copies=1,
        *,
        dihedral=True,
        shift=0.5,
        noise=1.0,
        zoom=0.0,
        shear=0.0,
        blur=0.0,
        seeing=0.0,
        seeing_labels="consistent",
        seeing_bands="same",
        noise_labels="keep",
        balance=False,
        random_state=None,
    ):
        self.n_copies = n_copies
        self.dihedral = dihedral
        self.shift = shift
        self.noise = noise
        self.zoom = zoom
        self.shear = shear
        self.blur = blur
        self.seeing = seeing
        self.seeing_labels = seeing_labels
        self.seeing_bands = seeing_bands
        self.noise_labels = noise_labels
        self.balance = balance
        self.random_state = random_state

    # ------------------------------------------------------------------ tags
    def __sklearn_tags__(self):
        from imblearn.utils._tags import InputTags, SamplerTags, Tags
        from sklearn.utils import TargetTags

        tags = Tags(
            estimator_type="sampler",
            target_tags=TargetTags(required=True),
            sampler_tags=SamplerTags(),
        )
        # 4-D cutouts only: there is no tag for that, and declaring 2-D
        # support would be false.
        tags.input_tags = InputTags(two_d_array=False)
        return tags

    # ------------------------------------------------------------ validation
    _parameter_constraints = {
        "n_copies": [Interval(Integral, 0, None, closed="left")],
        "dihedral": ["boolean"],
        **{name: [Interval(Real, 0, None, closed="left")] for name in ("shift", "noise", "shear", "blur", "seeing")},
        "zoom": [Interval(Real, 0, 1, closed="left")],
        "seeing_labels": [StrOptions(set(SEEING_LABELS))],
        "seeing_bands": [StrOptions(set(SEEING_BANDS))],
        "noise_labels": [StrOptions(set(NOISE_LABELS))],
        "balance": ["boolean", StrOptions({"smote"}), HasMethods(["fit_resample"])],
        "random_state": ["random_state"],
    }
    _parameter_hints = {
        "n_copies": "n_copies must be an integer >= 0",
        "dihedral": "dihedral must be True or False",
        **{name: f"{name} must be a finite number >= 0 (0 disables it)"
           for name in ("shift", "noise", "shear", "blur", "seeing")},
        "zoom": "zoom must be < 1 (scale factor 1 +/- zoom > 0)",
        "seeing_labels": f"seeing_labels must be one of {list(SEEING_LABELS)}",
        "seeing_bands": f"seeing_bands must be one of {list(SEEING_BANDS)}",
        "noise_labels": f"noise_labels must be one of {list(NOISE_LABELS)}",
        "balance": "balance must be True, False, 'smote' or an imbalanced-learn sampler (an object with "
                   "fit_resample)",
    }

    def _check_params(self):
        validate_params(self)
        for name in ("shift", "noise", "zoom", "shear", "blur", "seeing"):
            if not np.isfinite(getattr(self, name)):
                raise InvalidParameterError(f"{type(self).__name__}: {name} must be a finite number >= 0 "
                                            f"(0 disables it), got {getattr(self, name)!r}")

    def _check_data(self, X, y):
        who = type(self).__name__
        X = check_cutouts(X, who=who)
        n, _, h, w = X.shape
        if h != w or h % 2 == 0 or h < 3:
            raise ValueError(
                f"{who}: cutouts must be square with an odd side >= 3 so the object sits on the "
                f"centre pixel, got H x W = {h} x {w}"
            )
        y = _check_target(y, n, who)
        if self.seeing > 0:
            self._check_seeing_input(X)
        return X, y

    def _check_seeing_input(self, X):
        who = type(self).__name__
        n_channels = X.shape[1]
        if n_channels != 2 * N_IMAGE_BANDS:
            raise ValueError(
                f"{who}: seeing={self.seeing!r} needs PSF-aware cutouts of shape "
                f"(n, {2 * N_IMAGE_BANDS}, H, W) (5 images u..z, then the PSF in each band), "
                f"got {n_channels} channels; build the cutouts with Cutter(psf=True), or set "
                "seeing=0 (blur broadens 5-channel cutouts without telling the model)"
            )
        bad = np.flatnonzero(~np.isfinite(moment_fwhm(X[:, _R_PSF])))
        if bad.size:
            raise ValueError(
                f"{who}: seeing needs a positive r-band PSF stamp (channel {_R_PSF}) in every "
                f"cutout; {bad.size} of {len(X)} have none (rows {bad[:10].tolist()}"
                f"{' ...' if bad.size > 10 else ''})"
            )

    def _fit_stats(self, X):
        n_channels = X.shape[1]
        self.psf_aware_ = n_channels == 2 * N_IMAGE_BANDS
        if self.psf_aware_:  # noise is measured on the images; PSF channels are noise-free
            self.sky_noise_ = np.concatenate(
                [sky_noise(X[:, :N_IMAGE_BANDS]), np.zeros(N_IMAGE_BANDS)]
            )
        else:
            self.sky_noise_ = sky_noise(X)
        self.n_bands_in_ = n_channels
        self.cutout_shape_ = X.shape[2:]

    # ------------------------------------------------------------- public API
    def fit(self, X, y, **params):
        """Validate the parameters and data and measure ``sky_noise_``.

        Use :meth:`fit_resample` to get augmented data; ``fit`` exists for
        the sampler API.

        Parameters
        ----------
        X : array-like of shape (n, n_bands, H, W)
            Cutouts in nanomaggies, ``H == W`` odd.
        y : array-like of shape (n,)
            Binary labels (1 = galaxy, 0 = star).
        **params : dict
            Ignored (sampler API).

        Returns
        -------
        self : CutoutAugmenter
        """
        self._check_params()
        X, _ = split_inputs(X)
        X, y = self._check_data(X, y)
        self._fit_stats(X)
        self.sampler_ = None
        return self

    def fit_resample(self, X, y, **params):
        """Return the cutouts followed by augmented copies.

        Validates parameters and inputs (4-D real array, finite, square odd
        cutouts, 1-D binary ``y`` of matching length), then augments.

        Parameters
        ----------
        X : array-like of shape (n, n_bands, H, W)
            Cutouts in nanomaggies.
        y : array-like of shape (n,)
            Binary labels (1 = galaxy, 0 = star).
        **params : dict
            Ignored (sampler API).

        Returns
        -------
        X_res : ndarray of shape (n_res, n_bands, H, W), float32
            ``X`` (copied, unchanged, first) then the augmented rows.
        y_res : ndarray of shape (n_res,)
            Labels of ``X_res``.
        """
        self._check_params()
        X, features = split_inputs(X)  # measured features (hybrid CNN) follow their rows
        X, y = self._check_data(X, y)
        X_res, y_res = self._fit_resample(X, y)
        if features is not None:
            return join_inputs(X_res, features[self.sample_indices_]), y_res
        return X_res, y_res

    # ----------------------------------------------------------------- work
    def _fit_resample(self, X, y):
        """Augment validated float32 ``X`` and 1-D binary ``y``."""
        self._fit_stats(X)
        n, n_bands, h, w = X.shape
        streams = self._streams()

        X = X.copy()
        self.sampler_ = None
        origin = np.arange(n)  # original row behind each row of X
        if not isinstance(self.balance, (bool, np.bool_)):
            X_orig = X
            X, y = self._apply_sampler(X, y, streams["sampler"])
            origin = self._sampler_origin(X_orig, X, n)
            n = X.shape[0]

        src = np.tile(np.arange(n), self.n_copies)
        if self.balance is True:
            src = np.concatenate([src, self._balance_sources(y, streams["balance"])])
        copies = self._augment(X[src], streams, y[src])
        self.n_seeing_dropped_ = int(self._seeing_keep_.size - self._seeing_keep_.sum())
        self.n_noise_dropped_ = int((self._seeing_keep_ & ~self._noise_keep_).sum())
        keep = self._seeing_keep_ & self._noise_keep_
        if not keep.all():
            copies, src = copies[keep], src[keep]
        # imblearn convention: the input row behind every output row (used to carry
        # sky-region groups onto augmented rows, so validation splits cannot leak).
        self.sample_indices_ = np.concatenate([origin, origin[src]])
        return np.concatenate([X, copies]), np.concatenate([y, y[src]])

    def _sampler_origin(self, X_orig, X_new, n):
        """Input row behind each row a balance sampler returned.

        Uses the sampler's ``sample_indices_`` when it has one (random over-sampling);
        rows a sampler synthesised (SMOTE) are attributed to their nearest input row.
        """
        indices = getattr(self.sampler_, "sample_indices_", None)
        if indices is not None and len(indices) == len(X_new):
            return np.asarray(indices, dtype=np.intp)
        from sklearn.neighbors import NearestNeighbors

        origin = np.empty(len(X_new), dtype=np.intp)
        origin[:n] = np.arange(n)  # imblearn samplers return the input rows first
        if len(X_new) > n:
            nn = NearestNeighbors(n_neighbors=1).fit(X_orig.reshape(n, -1))
            origin[n:] = nn.kneighbors(X_new[n:].reshape(len(X_new) - n, -1), return_distance=False)[:, 0]
        return origin

    def _streams(self):
        rs = check_random_state(self.random_state)
        entropy = rs.randint(0, 2**31 - 1, size=4).tolist()
        # New streams go at the END: SeedSequence child i depends only on i, so the
        # existing techniques' draws never change when a technique is added.
        names = ("dihedral", "shift", "affine", "blur", "noise", "balance", "sampler", "seeing")
        return {
            name: np.random.default_rng(child)
            for name, child in zip(names, np.random.SeedSequence(entropy).spawn(len(names)))
        }

    def _balance_sources(self, y, rng):
        """Row indices of extra copies that equalise the (augmented) classes."""
        classes, counts = np.unique(y, return_counts=True)
        target = counts.max()
        extra = []
        for cls, count in zip(classes, counts):
            deficit = (target - count) * (1 + self.n_copies)
            if deficit == 0:
                continue
            rows = np.flatnonzero(y == cls)
            reps = -(-deficit // rows.size)
            order = np.concatenate([rng.permutation(rows) for _ in range(reps)])
            extra.append(order[:deficit])
        return np.concatenate(extra) if extra else np.empty(0, dtype=np.intp)

    def _apply_sampler(self, X, y, rng):
        who = type(self).__name__
        if isinstance(self.balance, str):
            from imblearn.over_sampling import SMOTE

            sampler = SMOTE()
        else:
            sampler = clone(self.balance)
        params = sampler.get_params() if hasattr(sampler, "get_params") else {}
        if "random_state" in params and params["random_state"] is None:
            sampler.set_params(random_state=int(rng.integers(2**31 - 1)))
        n, *shape = X.shape
        X2, y2 = sampler.fit_resample(X.reshape(n, -1), y)
        X2 = np.asarray(X2)
        if X2.ndim != 2 or X2.shape[1] != int(np.prod(shape)):
            raise ValueError(
                f"{who}: balance sampler {type(sampler).__name__} returned shape {X2.shape}; "
                f"expected (n, {int(np.prod(shape))})"
            )
        self.sampler_ = sampler
        return X2.reshape(-1, *shape).astype(np.float32, copy=False), np.asarray(y2)

    def _augment(self, X, streams, y=None):
        """One randomly perturbed version of every row of validated ``X``.

        ``streams`` maps technique names to numpy Generators (see
        ``_streams``); the row count is unchanged. Sets ``_seeing_keep_``: which
        copies keep a label consistent with SDSS's rule (``seeing_labels``; all
        True unless ``seeing`` turned a galaxy's copy point-like).
        """
        out = np.array(X, dtype=np.float32, copy=True)
        m, n_bands, h, w = out.shape
        self._seeing_keep_ = np.ones(m, dtype=bool)
        self._noise_keep_ = np.ones(m, dtype=bool)
        if m == 0:
            return out

        # Geometric (shift, zoom, shear): one affine map per copy, about the centre.
        do_shift, do_zoom, do_shear = self.shift > 0, self.zoom > 0, self.shear > 0
        if do_shift or do_zoom or do_shear:
            d = (
                streams["shift"].uniform(-self.shift, self.shift, size=(m, 2))
                if do_shift
                else np.zeros((m, 2))
            )
            rng = streams["affine"]
            scale = 1.0 + rng.uniform(-self.zoom, self.zoom, size=m) if do_zoom else np.ones(m)
            g = rng.uniform(-self.shear, self.shear, size=m) if do_shear else np.zeros(m)
            theta = rng.uniform(0.0, np.pi, size=m) if do_shear else np.zeros(m)
            out = affine(out, d, scale, g, theta)

        psf_aware = n_bands == 2 * N_IMAGE_BANDS
        nb = N_IMAGE_BANDS if psf_aware else n_bands  # image channels
        noise_level = np.ones(m)  # the copies' sky noise in units of sky_noise_ (for seeing)
        if self.blur > 0:
            sigmas = streams["blur"].uniform(0.0, self.blur, size=m)
            self._blur(out, sigmas, noise_level, nb, psf_aware)

        if self.seeing > 0:
            check = self.seeing_labels == "consistent" and y is not None
            galaxy = np.flatnonzero(np.asarray(y) == 1) if check else np.zeros(0, dtype=np.intp)
            before = point_source_ratio(out[galaxy]) if galaxy.size else None
            out = self._seeing(out, streams["seeing"], noise_level)
            if galaxy.size:
                # SDSS's label is relative to the PSF: a galaxy that the broader seeing makes
                # point-like by SDSS's rule (measured on the copy as on the original, without
                # noise added after this step) would be a star at that seeing. Such copies
                # are not added, instead of teaching the model that a point source is a galaxy.
                after = point_source_ratio(out[galaxy])
                flipped = (before < SDSS_TYPE_RATIO) & (after >= SDSS_TYPE_RATIO)
                self._seeing_keep_[galaxy[flipped]] = False

        if self.dihedral:
            out = dihedral(out, streams["dihedral"].integers(0, 8, size=m))

        if self.noise > 0:
            check = self.noise_labels == "consistent" and y is not None and psf_aware
            galaxy = np.flatnonzero(np.asarray(y) == 1) if check else np.zeros(0, dtype=np.intp)
            before = point_source_ratio(out[galaxy]) if galaxy.size else None
            sigma = (self.noise * np.nan_to_num(self.sky_noise_)).astype(np.float32)
            noise = streams["noise"].standard_normal(size=out.shape, dtype=np.float32)
            out += noise * sigma[None, :, None, None]  # 0 on PSF channels
            if galaxy.size:
                # observed shallower, a faint galaxy can look point-like by SDSS's rule: at that
                # depth SDSS would call it a star, so such copies are not added as galaxies
                after = point_source_ratio(out[galaxy])
                flipped = (before < SDSS_TYPE_RATIO) & (after >= SDSS_TYPE_RATIO)
                self._noise_keep_[galaxy[flipped]] = False
        return out

    def _seeing(self, out, rng, noise_level):
        """Broaden PSF-aware copies ``out`` (in place) towards ``seeing`` arcsec in r.

        See *Seeing augmentation* in the class docstring. ``noise_level[i]`` is
        copy ``i``'s sky noise entering this step, in units of ``sky_noise_``.
        """
        m, _, h, w = out.shape
        nb = N_IMAGE_BANDS
        top = self.seeing / PIXEL_SCALE_ARCSEC
        sky = np.nan_to_num(self.sky_noise_[:nb])
        # A fixed number of draws per copy (whatever the data), in copy order: one target per band
        # ('independent', from each band's PSF) or one for all bands (from the r PSF).
        if self.seeing_bands == "independent":
            u, current = rng.uniform(0.0, 1.0, size=(m, nb)), moment_fwhm(out[:, nb:])  # (m, nb) pixels
        else:
            u, current = rng.uniform(0.0, 1.0, size=(m, 1)), moment_fwhm(out[:, _R_PSF])[:, None]
        target = current + u * np.maximum(top - current, 0.0)
        # NaN where a band has no usable PSF stamp: that band keeps its seeing
        sigma_k = np.broadcast_to(np.sqrt(np.maximum(target**2 - current**2, 0.0)) / FWHM_PER_SIGMA, (m, nb))
        # One noise stamp per copy, in copy order (one draw of them all is the same stream).
        eps = rng.standard_normal(size=(m, nb, h, w), dtype=np.float32)
        # Every (copy, band) with a kernel wider than a delta, all at once: each stamp is convolved
        # with its own kernel by (H, H) and (W, W) matrix products (zero padding).
        copy, band = np.nonzero(np.isfinite(sigma_k) & (np.square(sigma_k) >= 1e-12))
        for lo in range(0, copy.size, BLOCK):
            i, b = copy[lo:lo + BLOCK], band[lo:lo + BLOCK]
            rows = gaussian_matrices(sigma_k[i, b], h)
            cols = rows if w == h else gaussian_matrices(sigma_k[i, b], w)
            img = out[i, b].astype(np.float64)
            level = border_median(img)[:, None, None]  # local sky level per band
            img = convolve_batch(img - level, rows, cols) + level
            restore = np.sqrt(np.clip(1.0 - noise_variance_factors(rows, cols), 0.0, 1.0))
            img += eps[i, b] * ((noise_level[i] * sky[b])[:, None, None] * restore)
            out[i, b] = img
            out[i, nb + b] = convolve_psf_batch(out[i, nb + b], rows, cols)
        return out

    @staticmethod
    def _blur(out, sigmas, noise_level, nb, psf_aware):
        """Blur copy ``i`` of ``out`` (in place) with a discrete Gaussian of ``sigmas[i]`` pixels:
        its image channels with the edge repeated, its PSF channels (if any) with zero padding and
        their sums kept. Sets ``noise_level[i]`` to the white-noise sigma factor of the 2-D kernel
        ``k k^T`` away from the edges: ``sqrt(sum (k_i k_j)^2) = sum k^2``."""
        m, _, h, w = out.shape
        copy = np.flatnonzero(np.square(sigmas) >= 1e-12)
        for lo in range(0, copy.size, BLOCK):
            i = copy[lo:lo + BLOCK]
            s = sigmas[i]
            kernels = gaussian_kernels(s)
            noise_level[i] = np.square(kernels).sum(axis=1)
            rows_n = kernel_matrices(kernels, h, mode="nearest")[:, None]
            cols_n = rows_n if w == h else kernel_matrices(kernels, w, mode="nearest")[:, None]
            out[i, :nb] = np.matmul(np.matmul(rows_n, out[i, :nb].astype(np.float64)),
                                    np.swapaxes(cols_n, 2, 3))
            if psf_aware:
                rows_z = kernel_matrices(kernels, h)
                cols_z = rows_z if w == h else kernel_matrices(kernels, w)
                k = len(i)
                psf = out[i, nb:].reshape(k * (out.shape[1] - nb), h, w)
                rep = out.shape[1] - nb
                out[i, nb:] = convolve_psf_batch(psf, np.repeat(rows_z, rep, axis=0),
                                                 np.repeat(cols_z, rep, axis=0)).reshape(k, rep, h, w)
