"""numba kernel of :mod:`stargal.photo` (private; imported lazily, compiled on first use and cached).

:func:`masked_gram_correction` removes the masked pixels' share from the templates' normal-matrix
entries of each object: ``A[i, k] -= sum_p (sum_j coef[i, j] T[p, j, k])^2`` over the masked pixels
``p`` of object ``i`` (or, when most of its disc is masked, the same sum over its unmasked pixels).
:mod:`stargal.photo` falls back to numpy versions of every kernel without numba.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["masked_gram_correction", "band_sums", "detection_snr", "neighbour_mask", "ring_sums", "annulus_median",
           "ordered_pixels", "combine_basis", "best_template", "cmodel_sums", "centre_normal_equations"]


def _jit(func):
    try:
        return numba.njit(cache=True, nogil=True, boundscheck=False, fastmath=True)(func)
    except RuntimeError:  # no writable cache location
        return numba.njit(nogil=True, boundscheck=False, fastmath=True)(func)


_FAST_WITH_NAN = {"reassoc", "contract", "nsz", "arcp"}  # fastmath that still sees NaN


def _jit_nan(func):
    """As :func:`_jit`, but with a fastmath that keeps NaN tests: the kernel tests for NaN."""
    try:
        return numba.njit(cache=True, nogil=True, boundscheck=False, fastmath=_FAST_WITH_NAN)(func)
    except RuntimeError:
        return numba.njit(nogil=True, boundscheck=False, fastmath=_FAST_WITH_NAN)(func)


@_jit
def masked_gram_correction(A, coef, Tp, obj_idx, pix_ptr, pix_idx, direct):  # pragma: no cover - compiled
    """In place on ``A`` (n, K); ``Tp`` is (P, J, K) (templates last, so the inner loop runs over
    contiguous memory); objects ``obj_idx[m]`` have pixels ``pix_idx[pix_ptr[m]:pix_ptr[m + 1]]``:
    their masked pixels, whose share is subtracted, or, where ``direct[m]``, their unmasked ones,
    whose sum replaces ``A[i]`` (no cancellation when most of the disc is masked)."""
    J = Tp.shape[1]
    K = Tp.shape[2]
    s = np.empty(K, np.float64)
    acc = np.empty(K, np.float64)
    for m in range(obj_idx.shape[0]):
        i = obj_idx[m]
        for k in range(K):
            acc[k] = 0.0
        for q in range(pix_ptr[m], pix_ptr[m + 1]):
            p = pix_idx[q]
            for k in range(K):
                s[k] = coef[i, 0] * Tp[p, 0, k]
            for j in range(1, J):
                c = coef[i, j]
                for k in range(K):
                    s[k] += c * Tp[p, j, k]
            for k in range(K):
                acc[k] += s[k] * s[k]
        if direct[m]:
            for k in range(K):
                A[i, k] = acc[k]
        else:
            for k in range(K):
                A[i, k] -= acc[k]


@_jit
def band_sums(d, P, usable, r, radius, sigma, src, out):  # pragma: no cover - compiled
    """One pass over each object's radius-ordered pixels (``(n, p)`` float32 ``d``, ``P``; bool
    ``usable``; radii ``r``): the sums behind the PSF flux, its error, the saturation test and the
    moment size, into ``out`` (n, 13) in the order of :data:`stargal.photo._SUMS`. ``src`` converts
    nanomaggies to the object's own Poisson variance (``nmgy_per_count / gain``)."""
    n, npx = d.shape
    for i in range(n):
        ppd = 0.0
        ppp = 0.0
        dd = 0.0
        npix = 0.0
        ind = 0.0
        inp = 0.0
        outd = 0.0
        outp = 0.0
        pmax = -np.inf
        peak = -np.inf
        tot = 0.0
        mom = 0.0
        rad = radius[i]
        src_i = src[i]
        s2 = sigma[i] * sigma[i]
        for q in range(npx):  # branch-free: masks as 0/1 factors (the masks are data, not predictable)
            rq = r[q]
            dq = d[i, q]
            pq = P[i, q]
            pmax = max(pmax, pq)
            peak = max(peak, dq if rq <= 2.0 else -np.inf)
            u = 1.0 if usable[i, q] else 0.0
            w = u if rq <= rad else 0.0
            pos = u * max(dq, 0.0) if rq <= 15.0 else 0.0
            tot += pos
            mom += pos * np.float32(rq * rq)
            npix += w
            ppd += w * pq * dq
            ppp += w * pq * pq
            dd += w * dq * dq
            wi = w if (rq > 3.5 and rq <= 7.0) else 0.0
            wo = w if (rq > 7.0 and rq <= 12.0) else 0.0
            ind += wi * dq
            inp += wi * pq
            outd += wo * dq
            outp += wo * pq
        flux = ppd / ppp if ppp > 0 else np.nan
        var = 0.0
        for q in range(npx):
            w = (1.0 if usable[i, q] else 0.0) if r[q] <= rad else 0.0
            pq = P[i, q]
            var += w * pq * pq * (s2 + max(flux * pq, 0.0) * src_i)
        out[i, 0] = ppd
        out[i, 1] = ppp
        out[i, 2] = dd
        out[i, 3] = var
        out[i, 4] = npix
        out[i, 5] = ind
        out[i, 6] = inp
        out[i, 7] = outd
        out[i, 8] = outp
        out[i, 9] = pmax
        out[i, 10] = peak
        out[i, 11] = tot
        out[i, 12] = mom


@_jit_nan
def detection_snr(stamps, sigma, weights, comb_from, nfac, out):  # pragma: no cover - compiled
    """Pixel-wise maximum S/N of Gaussian-smoothed stamps, per band and for the inverse-variance sum
    of bands ``comb_from:`` (``stamps`` (n, B, S, S) with NaN as 0; ``weights`` the 1-D Gaussian,
    odd length, 'reflect' edges like :func:`scipy.ndimage.gaussian_filter`; ``nfac`` the smoothed
    white noise per unit sigma), into ``out`` (n, S, S)."""
    n, B, S, _ = stamps.shape
    h = weights.shape[0] // 2
    L = weights.shape[0]
    pad = np.empty((S + 2 * h, S + 2 * h))  # one band with 'reflect' edges: d c b a | a b c d | d c b a
    src = np.empty(S + 2 * h, np.int64)
    for q in range(S + 2 * h):
        xx = q - h
        while xx < 0 or xx >= S:
            xx = -xx - 1 if xx < 0 else 2 * S - xx - 1
        src[q] = xx
    tmp = np.empty((S + 2 * h, S))
    sm = np.empty((B, S, S))
    comb = np.empty((S, S))
    for i in range(n):
        for b in range(B):
            for py in range(S + 2 * h):
                for px in range(S + 2 * h):
                    v = stamps[i, b, src[py], src[px]]
                    pad[py, px] = v if v == v else 0.0
            # inner loops over x: independent sums, so they vectorise without reordering any one of them
            for py in range(S + 2 * h):  # along x
                for x in range(S):
                    tmp[py, x] = weights[0] * pad[py, x]
                for t in range(1, L):
                    wt = weights[t]
                    for x in range(S):
                        tmp[py, x] += wt * pad[py, x + t]
            for y in range(S):  # along y
                for x in range(S):
                    sm[b, y, x] = weights[0] * tmp[y, x]
                for t in range(1, L):
                    wt = weights[t]
                    for x in range(S):
                        sm[b, y, x] += wt * tmp[y + t, x]
        wsum = 0.0
        for b in range(comb_from, B):
            wsum += 1.0 / (sigma[i, b] * sigma[i, b])
        cden = np.sqrt(wsum) * nfac
        for y in range(S):
            for x in range(S):
                out[i, y, x] = -np.inf
                comb[y, x] = 0.0
        for b in range(B):
            s = sigma[i, b]
            inv = 1.0 / (s * nfac)
            cw = 1.0 / (s * s) / cden
            for y in range(S):
                for x in range(S):
                    v = sm[b, y, x] * inv
                    if v > out[i, y, x]:
                        out[i, y, x] = v
                    if b >= comb_from:
                        comb[y, x] += sm[b, y, x] * cw
        for y in range(S):
            for x in range(S):
                c = comb[y, x]
                best = out[i, y, x]
                if c > best:
                    best = c
                out[i, y, x] = best if best == best else 0.0


@_jit
def neighbour_mask(snr, peak_snr, foot_snr, centre_radius, prominence, ring_in, ring_out, out):  # pragma: no cover
    """Pixels of other sources' footprints in ``(n, S, S)`` S/N maps, into bool ``out``: a pixel
    whose steepest-ascent root (each pixel points at its highest 8-neighbour if
    that one is strictly higher, the first of equals row by row winning) is a peak >= ``peak_snr`` farther than
    ``centre_radius`` from the stamp centre and rising >= ``prominence`` above the mean of its
    ``ring_in``-``ring_out`` px surroundings (the ring's pixels within the stamp), with its own S/N >=
    ``foot_snr`` (the footprint, not dilated)."""
    n, S, _ = snr.shape
    c = (S - 1) // 2
    ptr = np.empty(S * S, np.int64)
    peak_ok = np.empty(S * S, np.int8)  # per root: -1 not yet known, 0 no, 1 a neighbour's peak
    pad = np.full((S + 2, S + 2), -np.inf)  # the map with a -inf border: no bounds checks below
    w = int(ring_out)
    for i in range(n):
        peak_ok[:] = -1
        for y in range(S):
            for x in range(S):
                pad[y + 1, x + 1] = snr[i, y, x]
        for y in range(S):
            for x in range(S):
                best = pad[y + 1, x + 1]
                p = y * S + x
                for dy in range(-1, 2):  # neighbours row by row; the first of equals wins
                    for dx in range(-1, 2):
                        v = pad[y + 1 + dy, x + 1 + dx]
                        better = v > best  # the centre itself is never strictly above itself
                        best = v if better else best
                        p = (y + dy) * S + (x + dx) if better else p
                ptr[y * S + x] = p
        for q in range(S * S):
            r = q
            while ptr[r] != r:
                r = ptr[r]
            t = q
            while ptr[t] != r:  # path compression: later walks stop here
                nxt = ptr[t]
                ptr[t] = r
                t = nxt
            ry = r // S
            rx = r - ry * S
            y = q // S
            x = q - y * S
            if peak_ok[r] < 0:
                ok = (snr[i, ry, rx] >= peak_snr) and (np.hypot(ry - c, rx - c) > centre_radius)
                if ok:
                    tot = 0.0
                    cnt = 0
                    for yy in range(max(ry - w, 0), min(ry + w + 1, S)):
                        for xx in range(max(rx - w, 0), min(rx + w + 1, S)):
                            dist = np.hypot(yy - ry, xx - rx)
                            if dist >= ring_in and dist <= ring_out:
                                tot += snr[i, yy, xx]
                                cnt += 1
                    ok = cnt > 0 and snr[i, ry, rx] - tot / cnt >= prominence
                peak_ok[r] = 1 if ok else 0
            out[i, y, x] = (peak_ok[r] == 1) and (snr[i, y, x] >= foot_snr)


@_jit
def ring_sums(d, usable, pix, ring_of, n_rings, sums, counts):  # pragma: no cover - compiled
    """Per object, the sum and the number of usable pixels of each annulus: pixel ``pix[q]``
    belongs to annulus ``ring_of[q]`` (``d``, ``usable``: ``(n, P)`` flattened stamps), into
    ``sums`` (n, n_rings) and ``counts`` (n, n_rings)."""
    n = d.shape[0]
    for i in range(n):
        for j in range(n_rings):
            sums[i, j] = 0.0
            counts[i, j] = 0
        for q in range(pix.shape[0]):
            p = pix[q]
            if usable[i, p]:
                sums[i, ring_of[q]] += d[i, p]
                counts[i, ring_of[q]] += 1


@_jit
def _select(a, n, k):  # pragma: no cover - compiled
    """The k-th smallest (0-based) of ``a[:n]``, in place (quickselect, median-of-three pivots):
    afterwards ``a[:k]`` holds values <= it."""
    lo, hi = 0, n - 1
    while hi > lo:
        mid = (lo + hi) // 2
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        pivot = a[mid]
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return a[k]


@_jit_nan
def _median(a, n_all, work, counts):  # pragma: no cover - compiled
    """The median of the finite values of ``a[:n_all]`` (the rest are ``+inf``: masked), 0 when none
    is left (``a`` not modified). A histogram of 256 bins between two order statistics of a sample
    brackets the middle and only the middle's bins are selected among (``work``: scratch of at
    least ``n_all``; ``counts``: 258 ints); plain quickselect when the bracket misses. Every pass
    over the values is branch-free (the branches of a selection over noise are mispredicted)."""
    n_inf = 0
    for q in range(n_all):
        n_inf += 1 if a[q] == np.inf else 0
    n = n_all - n_inf
    if n == 0:
        return 0.0
    k_hi = n // 2
    k_lo = k_hi if n % 2 else k_hi - 1
    if n > 200:
        m = 0
        step = max(n_all // 40, 1)
        for q in range(0, n_all, step):
            if a[q] < np.inf:
                work[m] = a[q]
                m += 1
        if m >= 20:
            lo = _select(work, m, 2)
            hi = _select(work, m, m - 3)
            if hi > lo:
                scale = 256.0 / (hi - lo)
                for b in range(258):
                    for j in range(4):
                        counts[j, b] = 0
                # bin 0: below lo; 257: at or above hi (and every +inf); four histograms in turn,
                # so that equal neighbours do not wait on each other's increments
                n4 = n_all - n_all % 4
                for q in range(0, n4, 4):
                    counts[0, int(min(max((a[q] - lo) * scale + 1.0, 0.0), 257.0))] += 1
                    counts[1, int(min(max((a[q + 1] - lo) * scale + 1.0, 0.0), 257.0))] += 1
                    counts[2, int(min(max((a[q + 2] - lo) * scale + 1.0, 0.0), 257.0))] += 1
                    counts[3, int(min(max((a[q + 3] - lo) * scale + 1.0, 0.0), 257.0))] += 1
                for q in range(n4, n_all):
                    counts[0, int(min(max((a[q] - lo) * scale + 1.0, 0.0), 257.0))] += 1
                for b in range(258):
                    counts[0, b] += counts[1, b] + counts[2, b] + counts[3, b]
                c = 0
                c_lo = 0
                b_lo = -1
                b_hi = 258
                for b in range(258):
                    nc = c + counts[0, b]
                    if b_lo < 0 and nc > k_lo:
                        b_lo = b
                        c_lo = c
                    if nc > k_hi:
                        b_hi = b
                        break
                    c = nc
                if b_lo >= 1 and b_hi <= 256:  # both middle values inside the bracket
                    t = 0
                    for q in range(n_all):
                        v = a[q]
                        bq = int(min(max((v - lo) * scale + 1.0, 0.0), 257.0))
                        work[t] = v
                        t += 1 if (bq >= b_lo and bq <= b_hi) else 0
                    upper = _select(work, t, k_hi - c_lo)
                    if k_lo == k_hi:
                        return upper
                    lower = work[0]
                    for q in range(1, k_hi - c_lo):
                        lower = max(lower, work[q])
                    return 0.5 * (np.float64(lower) + np.float64(upper))  # in float64, like numpy
    t = 0
    for q in range(n_all):
        v = a[q]
        work[t] = v
        t += 1 if v < np.inf else 0
    upper = _select(work, n, k_hi)
    if k_lo == k_hi:
        return upper
    lower = work[0]
    for q in range(1, k_hi):
        lower = max(lower, work[q])
    return 0.5 * (np.float64(lower) + np.float64(upper))  # in float64, like numpy


@_jit_nan
def annulus_median(masked, cx, cy, rows, outer, inner, out):  # pragma: no cover - compiled
    """Per object, the median of the finite pixels of ``masked`` (float32, ``+inf`` where a pixel
    must not count) in an annulus around the integer pixel ``(cy[i], cx[i])``, into ``out``; 0 where
    no pixel is left. The annulus is given by rows: on row ``cy + rows[r]`` it spans columns
    ``|x - cx| <= outer[r]`` less ``|x - cx| <= inner[r]`` (``inner[r] < 0``: no hole). Pixels off
    the frame are skipped. Each row's two runs are copied whole (contiguous memory)."""
    ny, nx = masked.shape
    n_max = 0
    for r in range(rows.shape[0]):
        n_max += 2 * outer[r] + 1
    buf = np.empty(n_max, np.float32)
    work = np.empty(n_max, np.float32)
    counts = np.zeros((4, 258), np.int64)
    for i in range(cx.shape[0]):
        k = 0
        x0 = cx[i]
        for r in range(rows.shape[0]):
            y = cy[i] + rows[r]
            if y < 0 or y >= ny:
                continue
            a = min(max(x0 - outer[r], 0), nx)
            b = max(min(x0 + outer[r] + 1, nx), a)
            if inner[r] < 0:
                c0 = b
                c1 = b
            else:
                c0 = min(max(x0 - inner[r], a), b)
                c1 = max(min(x0 + inner[r] + 1, b), c0)
            buf[k:k + c0 - a] = masked[y, a:c0]
            k += c0 - a
            buf[k:k + b - c1] = masked[y, c1:b]
            k += b - c1
        out[i] = _median(buf, k, work, counts)


def _jit_exact(func):
    """As :func:`_jit`, without fastmath: the kernel repeats numpy's arithmetic operation for
    operation (the same values to the last bit)."""
    try:
        return numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")(func)
    except RuntimeError:
        return numba.njit(nogil=True, boundscheck=False, error_model="numpy")(func)


@_jit_exact
def ordered_pixels(d, usable, order, r, radius, d2, u2, dflat):  # pragma: no cover - compiled
    """Flattened stamps in the bank's radius order: ``d2[i, q] = d[i, order[q]]`` (``d`` float32,
    zero where not usable), ``u2`` the usable flags, ``dflat`` = ``d2`` on the object's fit region
    (usable and ``r[q] <= radius[i]``), else 0 (``d2 * 0``, as numpy's product with the region's
    float weights). Returns, for :func:`masked_gram_correction`, the objects with masked pixels in
    their disc, their pixel lists' offsets, the pixels (radius order) and whether the list holds the
    unmasked ones (most of the disc masked) instead of the masked ones."""
    n = d.shape[0]
    npx = order.shape[0]
    n_masked = np.zeros(n, np.int64)
    n_disc = np.zeros(n, np.int64)
    for i in range(n):
        for q in range(npx):
            p = order[q]
            u = usable[i, p]
            v = d[i, p]
            d2[i, q] = v
            u2[i, q] = u
            inside = r[q] <= radius[i]
            dflat[i, q] = v * np.float32(1.0 if (u and inside) else 0.0)
            if inside:
                n_disc[i] += 1
                if not u:
                    n_masked[i] += 1
    n_obj = 0
    total = 0
    for i in range(n):
        if n_masked[i] > 0:
            n_obj += 1
            total += n_disc[i] - n_masked[i] if n_masked[i] > 0.5 * n_disc[i] else n_masked[i]
    obj = np.empty(n_obj, np.int64)
    ptr = np.zeros(n_obj + 1, np.int64)
    idx = np.empty(total, np.int64)
    direct = np.zeros(n_obj, np.bool_)
    m = 0
    t = 0
    for i in range(n):
        if n_masked[i] == 0:
            continue
        obj[m] = i
        dr = n_masked[i] > 0.5 * n_disc[i]
        direct[m] = dr
        for q in range(npx):
            if r[q] <= radius[i] and (u2[i, q] == dr):
                idx[t] = q
                t += 1
        m += 1
        ptr[m] = t
    return obj, ptr, idx, direct


@_jit_exact
def combine_basis(B, coef, rows, b):  # pragma: no cover - compiled
    """``b[rows[i], k] = sum_j B[k, j, i] coef[rows[i], j]`` in float64, the basis images in order
    (``B``: float32 ``(k_max, J, len(rows))``); ``b[rows[i], k_max:] = 0``."""
    k_max, J = B.shape[0], B.shape[1]
    K = b.shape[1]
    for i in range(rows.shape[0]):
        o = rows[i]
        for k in range(k_max):
            acc = np.float64(B[k, 0, i]) * coef[o, 0]
            for j in range(1, J):
                acc += np.float64(B[k, j, i]) * coef[o, j]
            b[o, k] = acc
        for k in range(k_max, K):
            b[o, k] = 0.0


@_jit_exact
def best_template(b, A, dd, sigma, cap, re, n_re, n_sh, log_re, log_step,
                  flux, chi_ref, ln_re, shape, k_best):  # pragma: no cover - compiled
    """Per object, the template of least chi^2 (``chi2 = (dd - b^2 / A) / sigma^2``, linear amplitude
    ``b / A``; templates broader than ``cap`` or with ``A <= 0`` excluded; the first NaN or the first
    least value, as ``numpy.argmin``), then a parabola through its neighbours in ln r_e (same shape)
    where all three are finite and it is not at the grid's end: the refined amplitude, chi^2 and
    ln r_e. The arithmetic of :func:`stargal.photo._best_template_numpy`, operation for operation."""
    n, K = b.shape
    for i in range(n):
        s2 = sigma[i] * sigma[i]
        best = 0
        best_chi = np.inf
        for k in range(K):
            if re[k] > cap[i] or not (A[i, k] > 0):
                c = np.inf
            else:
                c = (dd[i] - b[i, k] * (b[i, k] / A[i, k])) / s2
            if c != c:  # NaN: numpy.argmin returns the first one
                best = k
                best_chi = c
                break
            if k == 0 or c < best_chi:
                best = k
                best_chi = c
        k_best[i] = best
        ire = best // n_sh
        ish = best - ire * n_sh
        shape[i] = ish
        inner = ire >= 1 and ire <= n_re - 2
        i0 = min(max(ire, 1), n_re - 2)
        km, k0, kp = (i0 - 1) * n_sh + ish, i0 * n_sh + ish, (i0 + 1) * n_sh + ish
        cm = _chi_at(b, A, dd, s2, cap, re, i, km)
        c0 = _chi_at(b, A, dd, s2, cap, re, i, k0)
        cp = _chi_at(b, A, dd, s2, cap, re, i, kp)
        inner = inner and np.isfinite(cm) and np.isfinite(cp) and np.isfinite(c0)
        if inner:
            den = cm - 2.0 * c0 + cp
            delta = 0.5 * (cm - cp) / den if den > 0 else 0.0
            if delta != delta:
                delta = 0.0
            delta = min(max(delta, -1.0), 1.0)
            am = b[i, km] / A[i, km]
            a0 = b[i, k0] / A[i, k0]
            ap = b[i, kp] / A[i, kp]
            flux[i] = a0 + 0.5 * delta * (ap - am) + 0.5 * (delta * delta) * (ap - 2.0 * a0 + am)
            chi_ref[i] = c0 - 0.25 * (cm - cp) * delta
            ln_re[i] = log_re[ire] + delta * log_step
        else:
            flux[i] = b[i, best] / A[i, best]
            chi_ref[i] = best_chi
            ln_re[i] = log_re[ire] + 0.0 * log_step


@_jit_exact
def _chi_at(b, A, dd, s2, cap, re, i, k):  # pragma: no cover - compiled
    if re[k] > cap[i] or not (A[i, k] > 0):
        return np.inf
    return (dd[i] - b[i, k] * (b[i, k] / A[i, k])) / s2


@_jit_nan
def cmodel_sums(coef, T_exp, T_dev, best_exp, best_dev, dflat, u2, r, radius, n_px, out):  # pragma: no cover
    """Per object, the normal equations of the linear mix of its best exp and deV templates over its
    fit region (``n_px[i]`` radius-ordered pixels, usable and within ``radius[i]``): ``out[i] =
    (dev.dev, exp.exp, dev.exp, dev.data, exp.data)``, templates ``coef[i] @ T[best]`` in float64."""
    n = coef.shape[0]
    J = coef.shape[1]
    for i in range(n):
        a11 = 0.0
        a22 = 0.0
        a12 = 0.0
        b1 = 0.0
        b2 = 0.0
        ke = best_exp[i]
        kd = best_dev[i]
        for p in range(n_px[i]):
            me = coef[i, 0] * np.float64(T_exp[ke, 0, p])
            md = coef[i, 0] * np.float64(T_dev[kd, 0, p])
            for j in range(1, J):
                me += coef[i, j] * np.float64(T_exp[ke, j, p])
                md += coef[i, j] * np.float64(T_dev[kd, j, p])
            v = np.float64(dflat[i, p])
            b1 += md * v
            b2 += me * v
            if u2[i, p] and r[p] <= radius[i]:
                a11 += md * md
                a22 += me * me
                a12 += md * me
        out[i, 0] = a11
        out[i, 1] = a22
        out[i, 2] = a12
        out[i, 3] = b1
        out[i, 4] = b2


@_jit_nan
def centre_normal_equations(d, region, P, M, b):  # pragma: no cover - compiled
    """The normal equations of one Gauss-Newton centring step per object: the PSF ``P[i]`` (its
    centre ``(h, w)`` pixels of a ``(h + 2, w + 2)`` stamp) and its central differences along x and
    y, fitted to the stamp ``d[i]`` (``(h, w)``) over ``region[i]`` and its finite pixels:
    ``M[i]`` (3 x 3) and ``b[i]`` (3) in float64."""
    n, h, w = d.shape
    for i in range(n):
        m00 = m01 = m02 = m11 = m12 = m22 = 0.0
        b0 = b1 = b2 = 0.0
        for y in range(h):
            for x in range(w):
                v = np.float64(d[i, y, x])
                if not region[i, y, x] or not np.isfinite(v):
                    continue
                c0 = P[i, y + 1, x + 1]
                c1 = 0.5 * (P[i, y + 1, x + 2] - P[i, y + 1, x])
                c2 = 0.5 * (P[i, y + 2, x + 1] - P[i, y, x + 1])
                m00 += c0 * c0
                m01 += c0 * c1
                m02 += c0 * c2
                m11 += c1 * c1
                m12 += c1 * c2
                m22 += c2 * c2
                b0 += c0 * v
                b1 += c1 * v
                b2 += c2 * v
        M[i, 0, 0] = m00
        M[i, 0, 1] = m01
        M[i, 0, 2] = m02
        M[i, 1, 0] = m01
        M[i, 1, 1] = m11
        M[i, 1, 2] = m12
        M[i, 2, 0] = m02
        M[i, 2, 1] = m12
        M[i, 2, 2] = m22
        b[i, 0] = b0
        b[i, 1] = b1
        b[i, 2] = b2
