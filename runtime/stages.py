"""Three stages over a stream of work items, one after another or pipelined in threads (no torch).

``run_stages(items, prepare, estimate, emit, pipelined, stop)`` does ``emit(estimate(prepare(item)))``
for every item. Pipelined, the stages of consecutive items overlap: the items are produced and
prepared in one thread, estimated in the calling thread (which owns the renderer's GL context), and
emitted in a third, with bounded queues (``QUEUE_DEPTH`` items) between them, so at most a few items
are in flight. OpenCV, ONNX Runtime and NumPy release the GIL in their heavy calls, so the threads
overlap on a multi-core CPU. The stage functions handle per-item errors themselves; an exception
that escapes one ends the run.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator

#: items waiting between two stages (each stage also holds the one it works on)
QUEUE_DEPTH = 1
#: seconds to wait for a stage thread at shutdown
JOIN_TIMEOUT_S = 10.0
_POLL_S = 0.05
_END = object()


def run_stages(items: Iterator, prepare: Callable, estimate: Callable, emit: Callable, pipelined: bool,
               stop: threading.Event) -> None:
    """``emit(estimate(prepare(item)))`` for every item of ``items``, in order.

    stop: set by a stage or the caller to end early: no new item is taken (pipelined, the items
    already taken, at most ``2 * QUEUE_DEPTH + 1``, are finished and emitted). An exception in a stage thread (KeyboardInterrupt
    included) is raised here after the threads have ended; a KeyboardInterrupt in the calling
    thread stops the other stages (estimated items are emitted) and propagates. ``items`` is closed
    at the end (a generator's ``finally`` runs), in the thread that iterates it.
    """
    if not pipelined:
        try:
            for item in items:
                if stop.is_set():
                    break
                emit(estimate(prepare(item)))
        finally:
            _close(items)
        return
    _pipelined(items, prepare, estimate, emit, stop)


def _close(items) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()


def _put(q: queue.Queue, item, give_up: Callable[[], bool]) -> bool:
    """Put ``item`` in ``q``, waiting while it is full; False (not put) once ``give_up()`` is true."""
    while True:
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            if give_up():
                return False


def _pipelined(items: Iterator, prepare: Callable, estimate: Callable, emit: Callable, stop: threading.Event) -> None:
    """The threaded form of :func:`run_stages`. Once ``stop`` is set no new item is taken; the
    items already taken (being prepared, queued, being estimated) are finished and emitted."""
    prepared: queue.Queue = queue.Queue(QUEUE_DEPTH)
    estimated: queue.Queue = queue.Queue(QUEUE_DEPTH)
    errors: list = []
    main_done = threading.Event()  # the calling thread takes no more prepared items

    def produce():  # items + prepare
        try:
            for item in items:
                if stop.is_set() or not _put(prepared, prepare(item), main_done.is_set):
                    break
        except BaseException as e:  # raised in the calling thread
            errors.append(e)
            stop.set()
        finally:
            try:
                _close(items)
            finally:
                _put(prepared, _END, main_done.is_set)

    def consume():  # emit, until _END
        try:
            while True:
                item = estimated.get()
                if item is _END:
                    return
                emit(item)
        except BaseException as e:
            errors.append(e)
            stop.set()

    producer = threading.Thread(target=produce, name="mrcnet-prepare", daemon=True)
    consumer = threading.Thread(target=consume, name="mrcnet-emit", daemon=True)
    producer.start()
    consumer.start()
    try:
        while True:
            try:
                item = prepared.get(timeout=_POLL_S)
            except queue.Empty:
                if not producer.is_alive() and prepared.empty():
                    break
                continue
            if item is _END or not _put(estimated, estimate(item), lambda: not consumer.is_alive()):
                break
    except BaseException:
        stop.set()
        raise
    finally:
        main_done.set()
        _shutdown(producer, consumer, prepared, estimated)
    if errors:
        raise errors[0]


def _shutdown(producer: threading.Thread, consumer: threading.Thread, prepared: queue.Queue,
              estimated: queue.Queue) -> None:
    """End both stage threads: the emitter after the items already estimated, the producer
    after its current item (its queue is drained so it is not blocked)."""
    while consumer.is_alive():
        try:
            estimated.put(_END, timeout=_POLL_S)
            break
        except queue.Full:
            continue
    consumer.join(JOIN_TIMEOUT_S)
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while producer.is_alive() and time.monotonic() < deadline:
        try:
            prepared.get(timeout=_POLL_S)
        except queue.Empty:
            pass
        producer.join(_POLL_S)
