"""SDSS identifiers, Science Archive Server (SAS) paths and the imaging constants.

Field identifiers (:class:`FieldID`), relative SAS paths, and the constants of SDSS imaging
that every module shares: the band order :data:`BANDS`, the nominal pixel scale
:data:`PIXEL_SCALE_ARCSEC` and the frame shape :data:`FRAME_SHAPE`. Pure string work: no I/O.
Paths are *relative* to a SAS base URL (``https://data.sdss.org/sas/`` or a mirror) and follow
the DR17 layout exactly::

    dr17/eboss/photoObj/frames/301/RUN/CAMCOL/frame-BAND-RRRRRR-C-FFFF.fits.bz2
    dr17/eboss/photoObj/frames/301/RUN/CAMCOL/frame-irg-RRRRRR-C-FFFF.jpg
    dr17/eboss/sweeps/dr13_final/301/calibObj-RRRRRR-C-{star,gal}.fits.gz
    dr17/eboss/photo/redux/301/RUN/objcs/CAMCOL/psField-RRRRRR-C-FFFF.fits

RUN is not zero-padded in directory names but is in file names.

Examples
--------
>>> fid = FieldID.parse("008162-6-0080")
>>> str(fid), fid.padded
('8162-6-80', '008162-6-0080')
>>> frame_path(fid, "r")
'dr17/eboss/photoObj/frames/301/8162/6/frame-r-008162-6-0080.fits.bz2'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BANDS",
    "PIXEL_SCALE_ARCSEC",
    "FRAME_SHAPE",
    "DEFAULT_SAS_URL",
    "DEFAULT_RERUN",
    "FieldID",
    "frame_path",
    "preview_path",
    "calibobj_path",
    "psfield_path",
    "field_paths",
    "sas_url",
    "parse_field_list",
]

#: SDSS bands in wavelength order; every cutout tensor uses this channel order.
BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z")

#: Nominal pixel scale of SDSS imaging (arcsec per pixel). Where a frame is at hand its own WCS
#: gives the scale (:attr:`stargal.frames.Frame.pixel_scale`); this is for when none is.
PIXEL_SCALE_ARCSEC = 0.396

#: Shape ``(ny, nx)`` of an SDSS frame (and of the pixel grid of its psField PSF model).
FRAME_SHAPE: tuple[int, int] = (1489, 2048)

#: The real SDSS Science Archive Server.
DEFAULT_SAS_URL = "https://data.sdss.org/sas/"

#: Photometric rerun of DR17 imaging.
DEFAULT_RERUN = 301

_FIELD_RE = re.compile(r"^\s*0*(\d{1,6})[-_/ ]0*([1-6])[-_/ ]0*(\d{1,4})\s*$")


@dataclass(frozen=True, order=True)
class FieldID:
    """One SDSS imaging field: ``run``-``camcol``-``field`` of a rerun.

    Parameters
    ----------
    run : int
        Imaging run number (1..999999).
    camcol : int
        Camera column (1..6).
    field : int
        Field number within the run (0..9999).
    rerun : int, default=301
        Photometric rerun.
    """

    run: int
    camcol: int
    field: int
    rerun: int = DEFAULT_RERUN

    def __post_init__(self):
        for name, lo, hi in (("run", 1, 999999), ("camcol", 1, 6), ("field", 0, 9999)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"FieldID.{name} must be an integer in [{lo}, {hi}], got {value!r}")

    @classmethod
    def parse(cls, text, rerun: int = DEFAULT_RERUN) -> "FieldID":
        """Parse ``'8162-6-80'``, ``'008162-6-0080'`` or a ``(run, camcol, field)`` tuple."""
        if isinstance(text, FieldID):
            return text
        if isinstance(text, (tuple, list)) and len(text) == 3:
            return cls(*(int(v) for v in text), rerun=rerun)
        m = _FIELD_RE.match(str(text))
        if not m:
            raise ValueError(
                f"cannot parse SDSS field {text!r}: expected RUN-CAMCOL-FIELD such as "
                "'8162-6-80' or '008162-6-0080'"
            )
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)), rerun=rerun)

    def __str__(self) -> str:
        return f"{self.run}-{self.camcol}-{self.field}"

    @property
    def padded(self) -> str:
        """The file-name form, ``RRRRRR-C-FFFF``."""
        return f"{self.run:06d}-{self.camcol}-{self.field:04d}"

    @property
    def frames_dir(self) -> str:
        """Relative SAS directory holding this field's frames."""
        return f"dr17/eboss/photoObj/frames/{self.rerun}/{self.run}/{self.camcol}"


def _check_band(band: str) -> str:
    if band not in BANDS:
        raise ValueError(f"unknown SDSS band {band!r}; expected one of {', '.join(BANDS)}")
    return band


def frame_path(fid: FieldID | str, band: str) -> str:
    """Relative SAS path of the calibrated frame of one band."""
    fid = FieldID.parse(fid)
    return f"{fid.frames_dir}/frame-{_check_band(band)}-{fid.padded}.fits.bz2"


def preview_path(fid: FieldID | str) -> str:
    """Relative SAS path of the ``irg`` colour JPEG preview."""
    fid = FieldID.parse(fid)
    return f"{fid.frames_dir}/frame-irg-{fid.padded}.jpg"


def calibobj_path(fid: FieldID | str, kind: str) -> str:
    """Relative SAS path of the ``calibObj`` sweep of the field's run+camcol.

    ``kind`` is ``'star'`` or ``'gal'``. The file covers every field of the
    run+camcol; readers select the field they need.
    """
    fid = FieldID.parse(fid)
    if kind not in ("star", "gal"):
        raise ValueError(f"calibObj kind must be 'star' or 'gal', got {kind!r}")
    return f"dr17/eboss/sweeps/dr13_final/{fid.rerun}/calibObj-{fid.run:06d}-{fid.camcol}-{kind}.fits.gz"


def psfield_path(fid: FieldID | str) -> str:
    """Relative SAS path of the field's ``psField`` (SDSS's PSF model; FITS, not compressed)."""
    fid = FieldID.parse(fid)
    return f"dr17/eboss/photo/redux/{fid.rerun}/{fid.run}/objcs/{fid.camcol}/psField-{fid.padded}.fits"


def field_paths(fid: FieldID | str, bands=BANDS, catalogs: bool = True, preview: bool = False) -> list[str]:
    """All relative paths needed for one field (frames, optionally catalogs and preview)."""
    fid = FieldID.parse(fid)
    paths = [frame_path(fid, b) for b in bands]
    if catalogs:
        paths += [calibobj_path(fid, "star"), calibobj_path(fid, "gal")]
    if preview:
        paths.append(preview_path(fid))
    return paths


def sas_url(relpath: str, base_url: str = DEFAULT_SAS_URL) -> str:
    """Join a base URL and a relative SAS path with exactly one slash."""
    return base_url.rstrip("/") + "/" + relpath.lstrip("/")


def parse_field_list(fields, who: str = "stargal") -> tuple[str, ...]:
    """Canonical, de-duplicated field strings from one field or a list of them.

    Examples
    --------
    >>> parse_field_list(["8162-6-80", "8162-6-80", FieldID(1006, 6, 11)])
    ('8162-6-80', '1006-6-11')
    """
    if isinstance(fields, (str, FieldID)):
        fields = [fields]
    try:
        items = list(fields)
    except TypeError:
        raise ValueError(f"{who}: fields must be None or a list of field strings such as "
                         f"['8162-6-80'], got {fields!r}") from None
    if not items:
        raise ValueError(f"{who}: fields is an empty list; pass None or at least one field")
    canon = []
    for f in items:
        try:
            canon.append(str(FieldID.parse(f)))
        except ValueError as exc:
            raise ValueError(f"{who}: bad entry in fields: {exc}") from None
    return tuple(dict.fromkeys(canon))
