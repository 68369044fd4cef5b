"""A sender thread between the control loop and a miner driver.

Why: message callbacks run on the MQTT network thread, and a driver's I/O can take seconds (a hung
LuxOS miner, a slow broker). A DR acknowledgement must not wait for it, and the network thread must
keep reading. :class:`SendQueue` takes batches in order and applies them one after another on its own
thread; ``submit`` returns a :class:`concurrent.futures.Future` with the driver's results, so the tick
can wait for its batch while the fast path does not.

Order is the safety property: the loop queues full-fleet batches while holding its lock, so the last
batch queued is the last applied and reflects every limit known when it was queued.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["SendQueue"]

log = logging.getLogger(__name__)

_STOP = object()


class SendQueue:
    """Apply queued jobs in order on one thread.

    The thread starts with the first :meth:`submit` (and again if it died); :meth:`close` stops it.

    Parameters
    ----------
    apply : callable
        Takes a job and returns its result (e.g. ``lambda batch: send_batch(driver, batch)``); its
        exceptions are set on the job's future, never raised on the thread.
    synchronous : bool, default False
        Run each job on the caller's thread instead (simulations and tests that need determinism).
    name : str, default "hashflex-sender"
        The thread's name (logs, ``threading.enumerate``).
    """

    def __init__(self, apply: Callable[[Any], Any], *, synchronous: bool = False, name: str = "hashflex-sender") -> None:
        self._apply = apply
        self.synchronous = synchronous
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._name = name
        self._lock = threading.Lock()

    def submit(self, job: Any, on_done: Callable[[Any, Any], None] | None = None) -> Future:
        """Queue ``job`` behind every job queued before it.

        Parameters
        ----------
        job : Any
            What ``apply`` takes (the loop's full-fleet batch of setpoints).
        on_done : callable, optional
            ``on_done(job, result)`` runs on the sender thread after ``apply`` returned (not when it
            raised); its own exceptions are logged, never lose the result.

        Returns
        -------
        concurrent.futures.Future
            Resolves to ``apply(job)``, or carries its exception. With ``synchronous=True`` it is
            already done when returned.
        """
        future: Future = Future()
        if self.synchronous:
            self._run_one(job, on_done, future)
            return future
        self._ensure_thread()
        self._queue.put((job, on_done, future))
        return future

    def pending(self) -> int:
        """The number of jobs queued and not yet taken by the thread (approximate, as ``qsize``)."""
        return self._queue.qsize()

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish what is queued, then stop the thread.

        Parameters
        ----------
        timeout_s : float, default 10.0
            How long to wait for the thread, s; a job still running then is left to finish on its
            (daemon) thread.
        """
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout_s)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            self._run_one(*item)

    def _run_one(self, job: Any, on_done: Callable[[Any, Any], None] | None, future: Future) -> None:
        try:
            result = self._apply(job)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            log.exception("sender: applying a batch failed")
            future.set_exception(exc)
            return
        try:
            if on_done is not None:
                on_done(job, result)
        except Exception:  # noqa: BLE001 - bookkeeping must not lose the result
            log.exception("sender: after-send bookkeeping failed")
        future.set_result(result)
