"""numba kernel of :mod:`stargal.photo` (private; imported lazily, compiled on first use and cached).

:func:`masked_gram_correction` removes the masked pixels' share from the templates' normal-matrix
entries of each object: ``A[i, k] -= sum_p (sum_j coef[i, j] T[p, k, j])^2`` over the masked pixels
``p`` of object ``i``. :func:`stargal.photo` falls back to the same loop in numpy without numba.
"""

from __future__ import annotations

import numba

__all__ = ["masked_gram_correction"]


def _jit(func):
    try:
        return numba.njit(cache=True, nogil=True, boundscheck=False, fastmath=True)(func)
    except RuntimeError:  # no writable cache location
        return numba.njit(nogil=True, boundscheck=False, fastmath=True)(func)


@_jit
def masked_gram_correction(A, coef, Tp, obj_idx, pix_ptr, pix_idx):  # pragma: no cover - compiled
    """In place on ``A`` (n, K); ``Tp`` is (P, K, J); objects ``obj_idx[m]`` have masked pixels
    ``pix_idx[pix_ptr[m]:pix_ptr[m + 1]]``."""
    K = Tp.shape[1]
    J = Tp.shape[2]
    for m in range(obj_idx.shape[0]):
        i = obj_idx[m]
        for q in range(pix_ptr[m], pix_ptr[m + 1]):
            p = pix_idx[q]
            for k in range(K):
                s = 0.0
                for j in range(J):
                    s += coef[i, j] * Tp[p, k, j]
                A[i, k] -= s * s
