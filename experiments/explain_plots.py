"""Plots of attribution maps (moved here from :mod:`stargal.explain`, which needs no matplotlib).

:func:`plot_attributions` draws a PNG grid of cutouts and their attribution maps (from
:func:`stargal.explain.integrated_gradients` / :func:`~stargal.explain.shap_maps`); stage
:mod:`experiments.explanations` uses it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stargal._imaging import mad_std
from stargal.explain import channel_names, check_attributions

__all__ = ["plot_attributions"]


def _asinh_stretch(img: np.ndarray) -> np.ndarray:
    """Robust asinh stretch of one image: ``asinh((img - median) / noise)``."""
    med = np.median(img)
    noise = mad_std(img)
    if not noise > 0:
        noise = img.std() if img.std() > 0 else 1.0
    return np.arcsinh((img - med) / noise)


def plot_attributions(
    cutouts, attributions, titles=None, path="attributions.png", bands=None, cmap="RdBu_r", dpi=100
):
    """Save a grid of images and their attribution maps to a PNG.

    Rows are objects. The first ``C`` columns show each band of the image
    (robust asinh stretch per panel, grey scale, 0.5-99.5 percentile limits);
    the next ``C`` columns show the attribution of each band with a diverging
    colour map symmetric about 0 (red = pushes towards the target class),
    one colour scale per row (``+-max |attr|`` of that object, given in the
    row label) so bands can be compared. Pixel ``(0, 0)`` is drawn at the
    top-left (``origin='upper'``), as ``image[row, column]``.

    Parameters
    ----------
    cutouts : array-like, shape (n, C, H, W)
        The images (raw nanomaggies or scaled network inputs).
    attributions : array-like, shape (n, C, H, W)
    titles : sequence of str, optional
        One label per row.
    path : str or Path
        Output PNG file (parent directories are created).
    bands : sequence of str, optional
        Channel names (default ``u, g, r, i, z``).
    cmap : str
        Diverging colour map for the attributions.
    dpi : int

    Returns
    -------
    Path
        The written file.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from experiments.explain_plots import plot_attributions
    >>> x = np.random.default_rng(0).normal(size=(2, 5, 9, 9))
    >>> p = plot_attributions(x, x, ["a", "b"], os.path.join(tempfile.mkdtemp(), "a.png"))
    >>> p.stat().st_size > 0
    True
    """
    from matplotlib.figure import Figure

    imgs = check_attributions(cutouts, name="cutouts")
    attr = check_attributions(attributions)
    if imgs.shape != attr.shape:
        raise ValueError(f"cutouts shape {imgs.shape} != attributions shape {attr.shape}")
    n, c = imgs.shape[:2]
    names = channel_names(c, bands)
    if titles is None:
        titles = [f"#{k}" for k in range(n)]
    titles = [str(t) for t in titles]
    if len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} objects")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(1.25 * 2 * c + 1.2, 1.3 * n + 0.5), dpi=dpi)
    axes = fig.subplots(n, 2 * c, squeeze=False)
    for i in range(n):
        vmax = float(np.max(np.abs(attr[i])))
        vmax = vmax if vmax > 0 else 1.0
        for k in range(c):
            s = _asinh_stretch(imgs[i, k])
            lo, hi = np.percentile(s, [0.5, 99.5])
            ax = axes[i, k]
            hi = hi if hi > lo else lo + 1
            ax.imshow(s, cmap="gray", vmin=lo, vmax=hi, origin="upper", interpolation="nearest")
            ax = axes[i, c + k]
            ax.imshow(
                attr[i, k], cmap=cmap, vmin=-vmax, vmax=vmax, origin="upper",
                interpolation="nearest",
            )
        axes[i, 0].set_ylabel(f"{titles[i]}\n|a|max={vmax:.2g}", fontsize=7)
    for k in range(c):
        axes[0, k].set_title(f"image {names[k]}", fontsize=8)
        axes[0, c + k].set_title(f"attr {names[k]}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    top = 1 - 0.35 / (1.3 * n + 0.5)
    fig.subplots_adjust(left=0.08, right=0.99, top=top, bottom=0.02, wspace=0.05, hspace=0.08)
    fig.savefig(path, format="png")
    return path
