"""The study configuration: which fields, which test field, model defaults and tuning grids.

The default study lives in ``stargal/data/study.toml`` as *data*; :func:`load_config` reads it
(or a user TOML file layered over it), applies keyword overrides, validates everything and returns
a :class:`StudyConfig`.

That file is the one source of these defaults: :class:`StudyConfig`'s field defaults are its
values, and its ``[cnn]`` table, as :data:`CNN_DEFAULTS`, gives the CNN's defaults to
:func:`stargal.classifier.make_cnn_net`, :class:`stargal.classifier.StarGalaxyNet` and the torch
modules of :mod:`stargal.cnn` (their signatures read it; nothing repeats the numbers).

Layering rules (for a user file and for keyword overrides alike):

* scalar settings and the field lists replace the default;
* ``cnn`` is merged key by key (every CNN setting always has a value); ``cnn__lr=3e-3`` is a
  shortcut for ``cnn={"lr": 3e-3}``;
* ``tuning_grid`` is merged mode by mode (``{"quick": {...}}`` replaces only the quick grid);
* ``forest_grid`` and ``extra_field_notes`` are replaced as a whole.

Unknown keys, malformed field strings (checked with :meth:`stargal.sdss.FieldID.parse`) and
out-of-range values raise :class:`ValueError` naming the offending key.

Examples
--------
>>> from stargal.config import load_config
>>> cfg = load_config()
>>> cfg.test_fields
('8162-6-80',)
>>> cfg.cutout_size
15
>>> load_config(seed=3, cnn__lr=3e-3).cnn["lr"]
0.003
"""

from __future__ import annotations

import copy
import functools
import tomllib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from numbers import Integral
from pathlib import Path
from types import MappingProxyType

from stargal._imaging import PSF_MODES
from stargal._validation import is_real as _is_real
from stargal.sdss import FieldID

__all__ = ["StudyConfig", "load_config", "default_config_text", "CNN_KEYS", "CNN_PARAM_NAMES", "CNN_DEFAULTS"]

#: The one name map of the CNN settings: ``[cnn]`` config names (the settings every configuration
#: defines, see ``study.toml``) -> pipeline parameter names (skorch ``prefix__param`` routing);
#: ``cutout_size`` (a ``[study]`` key) is tunable too.
CNN_PARAM_NAMES: dict[str, str] = {
    "width": "net__module__width",
    "depth": "net__module__depth",
    "dropout": "net__module__dropout",
    "lr": "net__lr",
    "weight_decay": "net__optimizer__weight_decay",
    "max_epochs": "net__max_epochs",
    "batch_size": "net__batch_size",
    "patience": "net__patience",
    "members": "net__module__members",
    "cutout_size": "cut__size",
}
#: The CNN settings every configuration defines (``[cnn]`` in ``study.toml``).
CNN_KEYS: tuple[str, ...] = tuple(k for k in CNN_PARAM_NAMES if k != "cutout_size")

_DEFAULT_RESOURCE = ("stargal", "data/study.toml")
_DEFAULT_SOURCE = "the packaged study.toml"

#: Model kinds the study compares (``default_model`` is one of them).
MODEL_KINDS = ("cnn", "hybrid", "forest", "rule")

#: Values of the ``psf`` key: the :class:`stargal.psf_channels.PSFChannels` modes (``'none'``:
#: PSF-blind).
PSF_CONFIG_MODES = PSF_MODES

# Scalar settings stored under [study] in the TOML file (flat attributes of StudyConfig).
_STUDY_KEYS = (
    "seed",
    "cutout_size",
    "exclusion_margin_arcsec",
    "group_cell_arcmin",
    "group_by",
    "cv_folds",
    "valid_fraction",
    "psf",
    "psf_source",
    "default_model",
)
_FIELD_LIST_KEYS = ("test_fields", "train_fields", "extra_fields")
_TOP_LEVEL_KEYS = _FIELD_LIST_KEYS + (
    "extra_field_notes",
    "study",
    "cnn",
    "tuning_grid",
    "forest_grid",
)


# ----------------------------------------------------------------------------------------------
# value checks
# ----------------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _check_int(name, v, lo=None):
    if not _is_int(v) or (lo is not None and v < lo):
        bound = f" >= {lo}" if lo is not None else ""
        raise ValueError(f"config key {name!r} must be an integer{bound}, got {v!r}")
    return int(v)


def _check_real(name, v, lo=None, hi=None, lo_open=False, hi_open=False):
    ok = _is_real(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        rng = f" in {lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"
        raise ValueError(f"config key {name!r} must be a finite number{rng}, got {v!r}")
    return float(v)


_CNN_CHECKS = {
    "width": lambda n, v: _check_int(n, v, 1),
    "depth": lambda n, v: _check_int(n, v, 1),
    "dropout": lambda n, v: _check_real(n, v, 0.0, 1.0, hi_open=True),
    "lr": lambda n, v: _check_real(n, v, 0.0, None, lo_open=True),
    "weight_decay": lambda n, v: _check_real(n, v, 0.0),
    "max_epochs": lambda n, v: _check_int(n, v, 1),
    "batch_size": lambda n, v: _check_int(n, v, 1),
    "patience": lambda n, v: _check_int(n, v, 1),
    "members": lambda n, v: _check_int(n, v, 1),
}


def _check_fields(name, values) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValueError(
            f"config key {name!r} must be a list of field strings such as '8162-6-80', got "
            f"{values!r}"
        )
    out = []
    for v in values:
        if not isinstance(v, (str, FieldID)):
            raise ValueError(
                f"config key {name!r}: field {v!r} must be a string such as '8162-6-80'"
            )
        try:
            out.append(str(FieldID.parse(v)))
        except ValueError as exc:
            raise ValueError(f"config key {name!r}: {exc}") from None
    dups = sorted({f for f in out if out.count(f) > 1})
    if dups:
        raise ValueError(f"config key {name!r} lists field(s) more than once: {', '.join(dups)}")
    return tuple(out)


def _check_grid(name, grid, value_check=None) -> dict:
    if not isinstance(grid, dict) or not grid:
        raise ValueError(
            f"config key {name!r} must be a non-empty table of parameter -> list of values"
        )
    out = {}
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or len(values) == 0:
            raise ValueError(
                f"config key '{name}.{key}' must be a non-empty list of values, got {values!r}"
            )
        if value_check is not None:
            if key not in value_check:
                raise ValueError(
                    f"config key '{name}.{key}' is not a CNN setting; "
                    f"expected one of {', '.join(CNN_KEYS)}"
                )
            values = [value_check[key](f"{name}.{key}", v) for v in values]
        out[str(key)] = list(values)
    return out


# ----------------------------------------------------------------------------------------------
# the configuration object
# ----------------------------------------------------------------------------------------------
def _packaged_value(key):
    return copy.deepcopy(_PACKAGED[key])  # a fresh copy: lists and tables are mutable


def _packaged(key):
    """A dataclass field whose default is the packaged study's value of ``key``."""
    return field(default_factory=functools.partial(_packaged_value, key))


@dataclass
class StudyConfig:
    """A validated study configuration.

    Construct it with :func:`load_config`; direct construction validates too, and every
    setting but the two field lists defaults to the packaged ``study.toml``'s value.

    Parameters
    ----------
    test_fields, train_fields, extra_fields : tuple of str
        SDSS fields (canonical ``'RUN-CAMCOL-FIELD'`` strings). Test fields are never used for
        training or validation; extra fields are available but not part of the default study.
        The three lists must be disjoint.
    extra_field_notes : dict of str -> str
        Why each extra field is set aside.
    seed : int
        Random seed (splits, CV shuffling, model initialisation).
    cutout_size : int
        Cutout side length in pixels; odd.
    exclusion_margin_arcsec : float
        Margin (arcsec) added around test-field footprints by :func:`stargal.split.exclude_fields`.
    group_cell_arcmin : float
        Side (arcmin) of the sky-grid cells used as groups by :func:`stargal.split.sky_groups`.
    group_by : {'cell', 'field'}
        Grouping for cross-validation and validation hold-out.
    cv_folds : int
        Number of group-aware CV folds of the tuning search (>= 2; ``experiments.tuning_stage``;
        a quick run uses at most 2).
    valid_fraction : float
        Fraction of training groups held out for early stopping, in (0, 0.5].
    psf : {'scaled', 'residual', 'unit', 'none'}
        What the models know of each field's PSF: ``'none'`` is PSF-blind (5 image channels,
        absolute-size features); otherwise cutouts carry the field's PSF per band, the CNN gets
        it through :class:`stargal.psf_channels.PSFChannels` in this mode and the forest gets
        PSF-relative features.
    psf_source : {'stars', 'psfield', 'auto'}
        Which PSF model (:func:`stargal.psf.field_psf`).
    default_model : {'cnn', 'hybrid', 'forest', 'rule'}
        What ``stargal train`` fits without ``--model-type``: the kind with the highest mean
        leave-one-field-out MCC in the study (``experiments/results``; a test keeps the two equal).
    cnn : dict
        CNN settings, exactly the keys of :data:`CNN_KEYS` (default :data:`CNN_DEFAULTS`).
    tuning_grid : dict of str -> dict
        CNN grids by mode (at least ``'quick'`` and ``'full'``); keys are :data:`CNN_KEYS` names.
    forest_grid : dict
        Random-forest grid, scikit-learn ``RandomForestClassifier`` parameter names.

    Examples
    --------
    >>> cfg = load_config()
    >>> cfg.all_fields[:2]
    ('8162-6-80', '1035-6-17')
    >>> sorted(cfg.param_grid("quick"))
    ['lr', 'width']
    """

    test_fields: tuple
    train_fields: tuple
    extra_fields: tuple = _packaged("extra_fields")
    extra_field_notes: dict = _packaged("extra_field_notes")
    seed: int = _packaged("seed")
    cutout_size: int = _packaged("cutout_size")
    exclusion_margin_arcsec: float = _packaged("exclusion_margin_arcsec")
    group_cell_arcmin: float = _packaged("group_cell_arcmin")
    group_by: str = _packaged("group_by")
    cv_folds: int = _packaged("cv_folds")
    valid_fraction: float = _packaged("valid_fraction")
    psf: str = _packaged("psf")
    psf_source: str = _packaged("psf_source")
    default_model: str = _packaged("default_model")
    cnn: dict = _packaged("cnn")
    tuning_grid: dict = _packaged("tuning_grid")
    forest_grid: dict = _packaged("forest_grid")

    def __post_init__(self):
        for key in _FIELD_LIST_KEYS:
            setattr(self, key, _check_fields(key, getattr(self, key)))
        if not self.test_fields:
            raise ValueError("config key 'test_fields' must name at least one field")
        if not self.train_fields:
            raise ValueError("config key 'train_fields' must name at least one field")
        for a, b in (("test_fields", "train_fields"), ("test_fields", "extra_fields"),
                     ("train_fields", "extra_fields")):
            common = sorted(set(getattr(self, a)) & set(getattr(self, b)))
            if common:
                raise ValueError(
                    f"config keys {a!r} and {b!r} must be disjoint; both list {', '.join(common)}"
                )

        if not isinstance(self.extra_field_notes, dict):
            raise ValueError("config key 'extra_field_notes' must be a table of field -> note")
        notes = {}
        for k, v in self.extra_field_notes.items():
            try:
                fid = str(FieldID.parse(k))
            except ValueError as exc:
                raise ValueError(f"config key 'extra_field_notes': {exc}") from None
            if not isinstance(v, str):
                raise ValueError(f"config key 'extra_field_notes.{k}' must be a string, got {v!r}")
            notes[fid] = v
        self.extra_field_notes = notes

        self.seed = _check_int("seed", self.seed, 0)
        self.cutout_size = _check_int("cutout_size", self.cutout_size, 1)
        if self.cutout_size % 2 == 0:
            raise ValueError(
                "config key 'cutout_size' must be odd (object on the central pixel), got "
                f"{self.cutout_size}"
            )
        self.exclusion_margin_arcsec = _check_real(
            "exclusion_margin_arcsec", self.exclusion_margin_arcsec, 0.0
        )
        self.group_cell_arcmin = _check_real(
            "group_cell_arcmin", self.group_cell_arcmin, 0.0, lo_open=True
        )
        if self.group_by not in ("cell", "field"):
            raise ValueError(
                f"config key 'group_by' must be 'cell' or 'field', got {self.group_by!r}"
            )
        self.cv_folds = _check_int("cv_folds", self.cv_folds, 2)
        self.valid_fraction = _check_real(
            "valid_fraction", self.valid_fraction, 0.0, 0.5, lo_open=True
        )

        if self.psf not in PSF_CONFIG_MODES:
            raise ValueError(f"config key 'psf' must be one of {list(PSF_CONFIG_MODES)}, got {self.psf!r}")
        if self.psf_source not in ("stars", "psfield", "auto"):
            raise ValueError(f"config key 'psf_source' must be 'stars', 'psfield' or 'auto', "
                             f"got {self.psf_source!r}")

        if self.default_model not in MODEL_KINDS:
            raise ValueError(f"config key 'default_model' must be one of {list(MODEL_KINDS)}, "
                             f"got {self.default_model!r}")

        if not isinstance(self.cnn, dict):
            raise ValueError("config key 'cnn' must be a table")
        unknown = sorted(set(self.cnn) - set(CNN_KEYS))
        if unknown:
            raise ValueError(
                f"unknown config key(s) in 'cnn': {', '.join(unknown)}; expected "
                f"{', '.join(CNN_KEYS)}"
            )
        missing = [k for k in CNN_KEYS if k not in self.cnn]
        if missing:
            raise ValueError(f"config table 'cnn' is missing: {', '.join(missing)}")
        self.cnn = {k: _CNN_CHECKS[k](f"cnn.{k}", self.cnn[k]) for k in CNN_KEYS}

        if not isinstance(self.tuning_grid, dict):
            raise ValueError("config key 'tuning_grid' must be a table of mode -> grid")
        missing = [m for m in ("quick", "full") if m not in self.tuning_grid]
        if missing:
            raise ValueError(f"config table 'tuning_grid' is missing mode(s): {', '.join(missing)}")
        self.tuning_grid = {
            str(mode): _check_grid(f"tuning_grid.{mode}", grid, _CNN_CHECKS)
            for mode, grid in self.tuning_grid.items()
        }
        self.forest_grid = _check_grid("forest_grid", self.forest_grid)

    # ------------------------------------------------------------------------------------------
    @property
    def all_fields(self) -> tuple[str, ...]:
        """Test fields, then training fields (extra fields excluded)."""
        return self.test_fields + self.train_fields

    def param_grid(self, mode: str = "quick") -> dict:
        """A copy of the CNN tuning grid of ``mode`` (keys are :data:`CNN_KEYS` names)."""
        if mode not in self.tuning_grid:
            raise ValueError(
                f"unknown tuning mode {mode!r}; configured: {', '.join(sorted(self.tuning_grid))}"
            )
        return copy.deepcopy(self.tuning_grid[mode])

    def to_dict(self) -> dict:
        """Plain nested dict (JSON/TOML-friendly; tuples become lists)."""
        d = asdict(self)
        for key in _FIELD_LIST_KEYS:
            d[key] = list(d[key])
        return d


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------
def default_config_text() -> str:
    """The text of the packaged ``study.toml`` (handy as a template for a user study)."""
    package, name = _DEFAULT_RESOURCE
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def _flatten_toml(doc: dict, source: str) -> dict:
    """TOML document -> StudyConfig keyword dict (the ``[study]`` table is flattened)."""
    unknown = sorted(set(doc) - set(_TOP_LEVEL_KEYS))
    if unknown:
        raise ValueError(
            f"unknown config key(s) in {source}: {', '.join(unknown)}; "
            f"expected top-level keys {', '.join(_TOP_LEVEL_KEYS)}"
        )
    out = {k: v for k, v in doc.items() if k != "study"}
    study = doc.get("study", {})
    if not isinstance(study, dict):
        raise ValueError(f"'study' in {source} must be a table")
    unknown = sorted(set(study) - set(_STUDY_KEYS))
    if unknown:
        raise ValueError(
            f"unknown config key(s) in [study] of {source}: {', '.join(unknown)}; "
            f"expected {', '.join(_STUDY_KEYS)}"
        )
    out.update(study)
    return out


def _layer(base: dict, update: dict, source: str) -> dict:
    """Apply ``update`` to ``base`` with the module's layering rules."""
    valid = {f.name for f in fields(StudyConfig)}
    out = copy.deepcopy(base)
    update = dict(update)
    # cnn__lr=... shortcuts
    for key in [k for k in update if k.startswith("cnn__")]:
        out.setdefault("cnn", {})
        sub = key[len("cnn__"):]
        if sub not in CNN_KEYS:
            raise ValueError(
                f"unknown config key {key!r} in {source}; CNN settings are {', '.join(CNN_KEYS)}"
            )
        update.setdefault("cnn", {})
        update["cnn"] = {**update["cnn"], sub: update.pop(key)}
    unknown = sorted(set(update) - valid)
    if unknown:
        raise ValueError(
            f"unknown config key(s) in {source}: {', '.join(unknown)}; "
            f"valid keys are {', '.join(sorted(valid))}"
        )
    for key, value in update.items():
        mergeable = key in ("cnn", "tuning_grid")
        if mergeable and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"cannot parse {source} as TOML: {exc}") from None


def load_config(path=None, **overrides) -> StudyConfig:
    """Load and validate a study configuration.

    Parameters
    ----------
    path : str or path-like, optional
        A user TOML file with the layout of the packaged ``study.toml``. It is layered over the
        packaged default (keys it does not set keep their default). ``None`` loads the default.
    **overrides
        Final overrides, by :class:`StudyConfig` attribute name (``seed=1``,
        ``test_fields=['8162-6-80']``, ``cnn={'lr': 3e-3}`` or ``cnn__lr=3e-3``).

    Returns
    -------
    StudyConfig

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For unknown keys (named in the message), bad field strings or out-of-range values.

    Examples
    --------
    >>> load_config(train_fields=["1035-6-17"]).train_fields
    ('1035-6-17',)
    """
    base = copy.deepcopy(_PACKAGED)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"study configuration file not found: {p}")
        source = str(p)
        user = _flatten_toml(_read_toml(p.read_text(encoding="utf-8"), source), source)
        base = _layer(base, user, source)
    if overrides:
        base = _layer(base, overrides, "load_config() overrides")
    return StudyConfig(**base)


#: The packaged study, flattened (``[study]`` keys at the top level): :class:`StudyConfig`'s defaults.
_PACKAGED = _flatten_toml(_read_toml(default_config_text(), _DEFAULT_SOURCE), _DEFAULT_SOURCE)
#: The CNN's default settings (read-only), keyed by :data:`CNN_KEYS`: the packaged study's ``[cnn]``
#: table, validated. The one source of the defaults of :func:`stargal.classifier.make_cnn_net`,
#: :class:`stargal.classifier.StarGalaxyNet`, :class:`stargal.cnn.StarGalaxyCNN` and
#: :class:`stargal.cnn.HybridCNN` (their signatures read it) and of :attr:`StudyConfig.cnn`.
CNN_DEFAULTS = MappingProxyType(load_config().cnn)
