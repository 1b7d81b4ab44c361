"""Compiled (numba) passes of the patient bootstrap: one loop over the sorted units per draw.

The bootstrap's metrics are sums of patient weights over units sorted by score, 1000 draws of them for every
row, fold and evaluation: about 54 G unit-weights at RSNA's size, where NumPy makes six to eight passes over
the units per draw. Here a draw is one loop. numba is imported, and each kernel compiled, on first use (so a
job that never draws does not pay for it); compiled code is cached beside the module, or, where that folder
cannot be written, in numba's user cache, and where no cache can be written at all it is compiled per process.
Float division follows IEEE (`error_model="numpy"`): a draw without one class gives NaN, as NumPy did.
"""
from __future__ import annotations

import numpy as np

_COMPILED: dict = {}
_LAST_COUNTS: list = []
_THREADS = [1]                # set_threads
_POOL: dict = {}


def _ranking_draws(code, cT, d0, patients, n_pos, n_neg, q, f32, out):  # pragma: no cover (compiled)
    """`weighted.Ranking.metrics` of the block of draws d0 .. d0 + len(out) into `out` (draws x (AUC, AP,
    sens...)), with

    - `code` the sorted units as patient row * 4 + 2 * positive + last of its tied group;
    - `cT` the patient counts, patients x draws (a unit's weights in every draw side by side, so that the
      loop over the block's draws is one vector loop per unit);
    - `patients` the ranking's patients with their positive and negative units `n_pos`, `n_neg`;
    - `q` the specificities with their thresholds ascending; `f32` the ratios in float32 (computed in
      float64 and rounded: for a quotient or product of float32 values that gives the float32 result);
    - sensitivity at q: the positives' weight of the groups whose negatives keep F within the threshold.
    """
    n, nq, nd = code.shape[0], q.shape[0], out.shape[0]
    p_all, n_all = np.zeros(nd), np.zeros(nd)
    for j in range(patients.shape[0]):
        row = cT[patients[j]]
        for d in range(nd):
            p_all[d] += row[d0 + d] * n_pos[j]
            n_all[d] += row[d0 + d] * n_neg[j]
    thr = np.empty((nq, nd))
    for k in range(nq):
        for d in range(nd):
            v = (1.0 - q[k]) * n_all[d] + 1e-6
            thr[k, d] = np.float64(np.float32(v)) if f32 else v
    t_up, f_up, pg, ng = np.zeros(nd), np.zeros(nd), np.zeros(nd), np.zeros(nd)
    lost, ap, sens, group = np.zeros(nd), np.zeros(nd), np.zeros((nq, nd)), np.zeros(nd)
    for u in range(n):
        cu = code[u]
        row = cT[cu >> 2]
        isp = float((cu >> 1) & 1)
        if cu & 1:                                  # the last unit of a group of tied scores
            for d in range(nd):
                w = row[d0 + d]
                wp = w * isp
                pgd, ngd, fd = pg[d] + wp, ng[d] + (w - wp), f_up[d]
                ta, fa = t_up[d] + pgd, fd + ngd
                lost[d] += pgd * (fd + 0.5 * ngd)   # pairs the group's positives lose (ties half)
                prec = ta / max(ta + fa, 1.0)
                prec32 = np.float64(np.float32(prec))
                ap[d] += pgd * (prec32 if f32 else prec)
                group[d] = pgd
                t_up[d], f_up[d], pg[d], ng[d] = ta, fa, 0.0, 0.0
            for k in range(nq):                     # apart, so that the loop above stays a vector loop
                for d in range(nd):
                    sens[k, d] += group[d] if f_up[d] <= thr[k, d] else 0.0
        else:
            for d in range(nd):
                w = row[d0 + d]
                wp = w * isp
                pg[d] += wp
                ng[d] += w - wp
    for d in range(nd):
        if p_all[d] <= 0.0 or n_all[d] <= 0.0:
            out[d, :] = np.nan
            continue
        pn = p_all[d] * n_all[d]
        out[d, 0] = 100.0 * ((pn - lost[d]) / (np.float64(np.float32(pn)) if f32 else pn))
        out[d, 1] = 100.0 * (ap[d] / p_all[d])
        for k in range(nq):
            v = sens[k, d] / p_all[d]
            out[d, 2 + k] = 100.0 * (np.float64(np.float32(v)) if f32 else v)


def _stratum_aucs(code, member, cT, d0, n_members, out):  # pragma: no cover (compiled)
    """The AUC (%) of each member stratum against the normals, in the block of draws d0 .. d0 + out.shape[1],
    into `out` (members x draws): one pass over the normals' and the members' units sorted by ascending score, normals first within
    a tied score (`code` patient row * 2 + last of its tied group, `member` -1 for a normal, else the
    stratum); `cT` the patient counts, patients x draws. An anomalous unit wins the normals below its
    score and half of those tied with it: integers and halves, so every sum is exact."""
    n, nd = code.shape[0], out.shape[1]
    below, tied = np.zeros(nd), np.zeros(nd)
    num, den = np.zeros((n_members, nd)), np.zeros((n_members, nd))
    for u in range(n):
        cu = code[u]
        row = cT[cu >> 1]
        k = member[u]
        if k < 0:
            for d in range(nd):
                tied[d] += row[d0 + d]
        else:
            for d in range(nd):
                num[k, d] += row[d0 + d] * (below[d] + 0.5 * tied[d])
                den[k, d] += row[d0 + d]
        if cu & 1:
            for d in range(nd):
                below[d] += tied[d]
                tied[d] = 0.0
    for k in range(n_members):
        for d in range(nd):
            out[k, d] = 100.0 * num[k, d] / (den[k, d] * below[d])


def _compiled(fn):
    """`fn` compiled with numba (cached where a cache folder can be written), once per process."""
    if fn.__name__ not in _COMPILED:
        import numba

        try:
            jit = numba.njit(cache=True, nogil=True, error_model="numpy")(fn)
        except RuntimeError:                        # no folder numba can cache in: compile in this process
            jit = numba.njit(cache=False, nogil=True, error_model="numpy")(fn)
        _COMPILED[fn.__name__] = jit
    return _COMPILED[fn.__name__]


def transposed(counts: np.ndarray) -> tuple[np.ndarray, int]:
    """`counts` (draws x patients) as patients x draws, C-ordered, float32 (exact: counts are below 2^24), and
    its largest count; made once for the last counts array passed (every row, fold and stratum of an
    evaluation draws the same array: at RSNA's size a transposition is 120 MB), so that array must not be
    changed in place between calls."""
    if _LAST_COUNTS and _LAST_COUNTS[0] is counts:
        return _LAST_COUNTS[1], _LAST_COUNTS[2]
    top = int(counts.max(initial=0))
    if top >= 2 ** 24:
        raise ValueError("patient counts of 2^24 or more")
    cT = np.ascontiguousarray(counts.T, dtype=np.float32)
    _LAST_COUNTS[:] = [counts, cT, top]
    return cT, top


def set_threads(n: int) -> None:
    """Split every later call's draws over `n` threads (the report job's `threads`; the kernels release the
    GIL): the same values, block by block, whatever `n`."""
    _THREADS[0] = max(1, int(n))


def _over_blocks(n_draws: int, block: int, run) -> None:
    """run(first draw) for every block of draws, on `set_threads` threads where there is more than one block."""
    starts = range(0, n_draws, block)
    n = min(_THREADS[0], len(starts))
    if n <= 1:
        for i in starts:
            run(i)
        return
    if _POOL.get("n") != n:
        from concurrent.futures import ThreadPoolExecutor

        if "pool" in _POOL:
            _POOL["pool"].shutdown()
        _POOL.update(n=n, pool=ThreadPoolExecutor(n, thread_name_prefix="ichbench-draws"))
    run(starts[0])                                     # here: a first call compiles or loads the kernel once
    for _ in _POOL["pool"].map(run, starts[1:]):       # re-raises a block's error here
        pass


def ranking_draws(code, counts, patients, n_pos, n_neg, q, f32: bool, out, block: int = 32) -> None:
    """Compiled `_ranking_draws` (see there) over `counts` (draws x patients), `block` draws at a time."""
    kernel, (cT, _) = _compiled(_ranking_draws), transposed(counts)
    f32 = bool(f32)
    _over_blocks(len(counts), block, lambda i: kernel(code, cT, i, patients, n_pos, n_neg, q, f32, out[i:i + block]))


def stratum_aucs(code, member, counts, n_members: int, out, block: int = 32) -> None:
    """Compiled `_stratum_aucs` (see there) over `counts` (draws x patients), `block` draws at a time, into
    `out` (members x draws)."""
    kernel, (cT, _) = _compiled(_stratum_aucs), transposed(counts)

    def run(i):
        res = np.empty((n_members, min(block, len(counts) - i)))
        kernel(code, member, cT, i, n_members, res)
        out[:, i:i + block] = res

    _over_blocks(len(counts), block, run)
