"""The noise model of an SDSS frame: camera gain, dark variance, calibration and sky.

SDSS frames are calibrated (nanomaggies) and sky-subtracted. What a pixel's noise was in the raw
data is recovered from three things the frame file and the camera tables give:

* ``calib[x]`` -- nanomaggies per count of each column (the frame's HDU1 calibration vector);
* ``sky_counts`` -- the sky level behind the frame, counts per pixel (median of HDU2's ``ALLSKY``
  grid);
* the camera's **gain** (electrons per count, :data:`GAIN`) and **dark variance** (counts^2 per
  pixel, read noise plus dark current, :data:`DARK_VARIANCE`), per camcol and band.

The variance of a pixel of column ``x`` holding a source model ``m`` (nanomaggies) is then, in
nanomaggies^2::

    var = (sky_counts / gain + dark_variance) * calib[x]**2 + max(m, 0) * calib[x] / gain

(Poisson noise of sky and source in electrons, plus the dark variance, converted to nanomaggies).
:class:`FrameCalibration` holds the numbers of one band's frame; :func:`frame_calibration` reads
them (memoised per process; the calibration vector and sky level are cached beside the
decompressed frame by :func:`stargal.frames.load_calibration`).

Both tables are the SDSS frame data model's ("Gain" and "Dark variance" tables of
``data.sdss.org/datamodel/files/BOSS_PHOTOOBJ/frames/RERUN/RUN/CAMCOL/frame.html``); some entries
change with the run number.

Examples
--------
>>> camera_gain("8162-6-80", "r"), dark_variance("8162-6-80", "r")
(4.895, 0.9025)
>>> camera_gain("1000-2-10", "u"), camera_gain("1200-2-10", "u")
(1.595, 1.825)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .frames import Field, load_calibration
from .sdss import BANDS, FieldID, frame_path

__all__ = [
    "GAIN",
    "DARK_VARIANCE",
    "camera_gain",
    "dark_variance",
    "FrameCalibration",
    "frame_calibration",
]

#: SDSS imaging camera gains, electrons per count, by camcol (1-6) and band (u, g, r, i, z);
#: camcol 2 u is 1.825 for runs > 1100 (:func:`camera_gain`).
GAIN = {
    1: (1.62, 3.32, 4.71, 5.165, 4.745),
    2: (1.595, 3.855, 4.6, 6.565, 5.155),
    3: (1.59, 3.845, 4.72, 4.86, 4.885),
    4: (1.6, 3.995, 4.76, 4.885, 4.775),
    5: (1.47, 4.05, 4.725, 4.64, 3.48),
    6: (2.17, 4.035, 4.895, 4.76, 4.69),
}
#: Dark variance (counts^2 per pixel: read noise and dark current) by camcol and band, for runs
#: < 1500 and, where it differs, runs >= 1500 (``(early, late)``; :func:`dark_variance`).
DARK_VARIANCE = {
    1: ((9.61, 15.6025, 1.8225, 7.84, 0.81),) * 2,
    2: ((12.6025, 1.44, 1.00, 5.76, 1.0), (12.6025, 1.44, 1.00, 6.25, 1.0)),
    3: ((8.7025, 1.3225, 1.3225, 4.6225, 1.0),) * 2,
    4: ((12.6025, 1.96, 1.3225, 6.25, 9.61), (12.6025, 1.96, 1.3225, 7.5625, 12.6025)),
    5: ((9.3025, 1.1025, 0.81, 7.84, 1.8225), (9.3025, 1.1025, 0.81, 7.84, 2.1025)),
    6: ((7.0225, 1.8225, 0.9025, 5.0625, 1.21),) * 2,
}
_MEMO: dict = {}
_MEMO_LOCK = threading.Lock()


def camera_gain(fid, band: str) -> float:
    """Electrons per count of the field's camcol and band (:data:`GAIN`)."""
    fid = FieldID.parse(fid)
    if fid.camcol == 2 and band == "u" and fid.run > 1100:
        return 1.825
    return float(GAIN[fid.camcol][BANDS.index(band)])


def dark_variance(fid, band: str) -> float:
    """Dark variance (counts^2 per pixel) of the field's camcol and band (:data:`DARK_VARIANCE`)."""
    fid = FieldID.parse(fid)
    return float(DARK_VARIANCE[fid.camcol][int(fid.run >= 1500)][BANDS.index(band)])


@dataclass
class FrameCalibration:
    """The noise model of one band's frame.

    Attributes
    ----------
    band : str
    calib : ndarray (nx,)
        Nanomaggies per count of each column (HDU1).
    gain : float
        Electrons per count.
    sky_counts : float
        Median sky level (counts per pixel) of HDU2's ``ALLSKY`` grid; NaN when the frame has none.
    dark_variance : float
        Counts^2 per pixel.
    """

    band: str
    calib: np.ndarray
    gain: float
    sky_counts: float = float("nan")
    dark_variance: float = 0.0

    def nmgy_per_count(self, x) -> np.ndarray:
        """``calib`` at 0-based column positions ``x`` (nearest column, clipped to the frame)."""
        cols = np.clip(np.floor(np.asarray(x, float) + 0.5), 0, self.calib.size - 1).astype(int)
        return self.calib[cols]

    def sky_sigma(self, x) -> np.ndarray:
        """Per-pixel noise (nanomaggies) of the sky and the dark variance at columns ``x``."""
        return np.sqrt(self.sky_counts / self.gain + self.dark_variance) * self.nmgy_per_count(x)

    def source_noise(self, model: np.ndarray, x0: int, rng) -> np.ndarray:
        """Poisson noise of a source model stamp whose first column is frame column ``x0`` (nanomaggies)."""
        cols = np.clip(np.arange(x0, x0 + model.shape[1]), 0, self.calib.size - 1)
        c = self.calib[cols][None, :]
        lam = np.clip(model, 0.0, None) * self.gain / c
        return (rng.poisson(lam) - lam) * c / self.gain

    @property
    def sky_sigma_nmgy(self) -> float:
        """Expected Poisson noise of the sky alone per pixel (nanomaggies, median column)."""
        return float(np.sqrt(self.sky_counts / self.gain) * np.median(self.calib))


def frame_calibration(field: Field, band: str) -> FrameCalibration:
    """The calibration (HDU1), sky level (HDU2), gain and dark variance of one band's frame.

    Memoised per process (keyed by the cache directory, field and band).
    """
    key = ("calib", str(field.fetcher.cache_dir), str(field.fid), band)
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    calib, sky = load_calibration(field.fetcher, frame_path(field.fid, band))  # real HDU1/HDU2 data
    out = FrameCalibration(band, calib, camera_gain(field.fid, band), sky, dark_variance(field.fid, band))
    with _MEMO_LOCK:
        _MEMO[key] = out
    return out
