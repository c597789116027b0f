"""torch's intra-op thread count at prediction: set it for a block, and choose it by timing (private).

* :func:`torch_threads`: run a block with ``torch.set_num_threads(n)``, the caller's setting
  restored afterwards (also after an error).
* :func:`thread_candidates`: the counts worth trying on this machine (the process's setting, halves
  of it, and 1; ``STARGAL_PREDICT_THREADS=n`` fixes one).
* :class:`ThreadProbe`: chooses among them while a loop of equal batches runs, by timing the
  batches themselves (on cores busy with other work, torch's threads otherwise wait on each other).

:meth:`stargal.classifier.StarGalaxyNet.predict_proba` uses the three; ``benchmarks`` reports the
candidates it tried.
"""

from __future__ import annotations

import contextlib
import os
import time

import torch

__all__ = ["torch_threads", "thread_candidates", "ThreadProbe", "ENV_PREDICT_THREADS",
           "PROBE_EVERY", "PROBE_REPEATS"]

#: Environment variable fixing the torch intra-op threads used at prediction (skips the probe).
ENV_PREDICT_THREADS = "STARGAL_PREDICT_THREADS"
#: Batches between two probes of the best thread count (load changes while predicting).
PROBE_EVERY = 32
#: Batches each candidate is timed on in one probe (one alone is too noisy under load).
PROBE_REPEATS = 2


@contextlib.contextmanager
def torch_threads(n):
    """Run the block with ``torch.set_num_threads(n)``; restore the previous setting after.

    ``n=None`` leaves the setting alone. Used at prediction so that a forward pass runs on as
    many intra-op threads as there are free cores, without changing the caller's setting.

    Examples
    --------
    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    old = torch.get_num_threads()
    if n is not None and int(n) != old:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def thread_candidates() -> list[int]:
    """Thread counts worth trying at prediction: the process's setting, halves of it, and 1.

    The process's setting is capped at the CPUs this process may run on. ``STARGAL_PREDICT_THREADS``
    (:data:`ENV_PREDICT_THREADS`), when set, is the only candidate.

    Returns
    -------
    list of int
        Largest first, each at least 1.

    Raises
    ------
    ValueError
        ``STARGAL_PREDICT_THREADS`` is set but is not a positive integer.

    Examples
    --------
    >>> import os
    >>> os.environ[ENV_PREDICT_THREADS] = "3"
    >>> thread_candidates()
    [3]
    >>> del os.environ[ENV_PREDICT_THREADS]
    >>> thread_candidates()[-1]
    1
    """
    env = os.environ.get(ENV_PREDICT_THREADS, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"{ENV_PREDICT_THREADS} must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"{ENV_PREDICT_THREADS} must be a positive integer, got {env!r}")
        return [n]
    top = max(1, torch.get_num_threads())
    try:
        top = min(top, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        pass
    out, n = [], top
    while n > 1:
        out.append(n)
        n //= 2
    return out + [1]


class ThreadProbe:
    """Choose torch's intra-op thread count while a loop of equal batches runs, by timing them.

    Enter the probe around the loop (it sets the first candidate and restores the caller's
    setting on exit, as :func:`torch_threads`) and wrap each batch's work in :meth:`timed`.
    Batch 0 warms up on the first candidate, untimed. From batch 1 on, each candidate is timed
    on ``repeats`` batches in turn, then the fastest is used; the probe starts again every
    ``every`` batches (batches 1, ``every + 1``, ``2 * every + 1``, ...), as the machine's load
    changes. With one candidate nothing is probed.

    Parameters
    ----------
    candidates : list of int, optional
        Thread counts to try, the warm-up's first; default :func:`thread_candidates` (which
        raises for a bad ``STARGAL_PREDICT_THREADS``).
    every : int, default=PROBE_EVERY
        Batches from the start of one probe to the start of the next.
    repeats : int, default=PROBE_REPEATS
        Batches each candidate is timed on in one probe.

    Attributes
    ----------
    best : int
        The count used between probes: the fastest of the last complete probe (the first
        candidate before one has ended).
    timings : dict of int -> float
        Seconds per candidate in the current or last probe.

    Examples
    --------
    Which count each batch runs on does not depend on the timings while probing:

    >>> probe = ThreadProbe([2, 1], every=5)
    >>> used = []
    >>> with probe:
    ...     for batch in range(8):
    ...         with probe.timed() as threads:
    ...             used.append(threads)
    >>> used[:5], used[6:]
    ([2, 2, 2, 1, 1], [2, 2])

    Between two probes, the fastest of the last one:

    >>> used[5] == probe.best
    True
    """

    def __init__(self, candidates=None, every=PROBE_EVERY, repeats=PROBE_REPEATS):
        candidates = thread_candidates() if candidates is None else [int(c) for c in candidates]
        if not candidates or min(candidates) < 1:
            raise ValueError(f"candidates must be positive thread counts, got {candidates!r}")
        if int(every) < 1 or int(repeats) < 1:
            raise ValueError(f"every and repeats must be >= 1, got every={every!r}, repeats={repeats!r}")
        self.candidates = candidates
        self.every = int(every)
        self.repeats = int(repeats)
        self.best = candidates[0]
        self.timings: dict[int, float] = {}
        self._plan = list(candidates)  # counts still to time in the current probe
        self._batch = 0
        self._threads = None

    def __enter__(self):
        self._threads = torch_threads(self.candidates[0])
        self._threads.__enter__()
        return self

    def __exit__(self, *exc_info):
        threads, self._threads = self._threads, None
        return threads.__exit__(*exc_info)

    @contextlib.contextmanager
    def timed(self):
        """Run one batch's work on the count chosen for it (yielded), timing it while probing."""
        k = self._batch
        if k % self.every == 1 and len(self.candidates) > 1:  # batch 0 warms up, untimed
            self._plan = [c for c in self.candidates for _ in range(self.repeats)]
            self.timings = {}
        threads = self._plan[0] if self._plan else self.best
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        start = time.perf_counter()
        yield threads
        elapsed = time.perf_counter() - start
        self._batch += 1
        if self._plan and k > 0:
            used = self._plan.pop(0)
            self.timings[used] = self.timings.get(used, 0.0) + elapsed
            if not self._plan:
                self.best = min(self.timings, key=self.timings.get)
