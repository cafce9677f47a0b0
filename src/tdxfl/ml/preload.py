"""Import the ML stack in the background while a party does something else.

Importing TensorFlow + Keras (and scikit-learn for the digits data) takes ~3-5 s of CPU, more than
anything else a demo party does before training. A party first fetches its model key from the key
broker (network round trips, and retries while the broker is still starting), so
:func:`start_preload` lets the import run in a daemon thread meanwhile; the party's own later
``import`` of the same modules then waits for (or finds) the finished module instead of starting
over.

Rules that keep this safe with Python's per-module import locks: start the preload only after
the calling thread's own module-level imports are done, and do not import any of the preloaded
modules from inside another module's import in the meantime (a later import from a function body
simply waits for the preload thread). A failure in the preload thread is only logged: the
caller's own import then raises the real error where it would have anyway.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Sequence

__all__ = ["dataset_modules", "framework_modules", "start_preload", "training_modules"]

log = logging.getLogger(__name__)

_FRAMEWORK_MODULES: dict[str, tuple[str, ...]] = {
    # models first: it imports keras, which imports tensorflow (and scikit-learn, if installed)
    "keras": ("tdxfl.ml.models", "tdxfl.ml.keras_adapter"),
    "torch": ("tdxfl.ml.torch_models", "tdxfl.ml.torch_adapter"),
}
_DATASET_MODULES: dict[str, tuple[str, ...]] = {
    "digits": ("sklearn.datasets", "sklearn.model_selection"),
}


def framework_modules(framework: str) -> tuple[str, ...]:
    """The modules :func:`tdxfl.ml.factory.make_adapter` imports for ``framework`` (or ``()``)."""
    return _FRAMEWORK_MODULES.get(framework, ())


def dataset_modules(dataset: str) -> tuple[str, ...]:
    """The third-party modules :func:`tdxfl.ml.data.load_dataset` imports for ``dataset``."""
    return _DATASET_MODULES.get(dataset.lower().replace("-", "").replace("_", ""), ())


def training_modules(framework: str, dataset: str) -> tuple[str, ...]:
    """What a party training ``framework`` on ``dataset`` will import, in the order it needs them."""
    return dataset_modules(dataset) + framework_modules(framework)


def _set_thread_nice(nice: int) -> None:
    """Lower this thread's CPU priority (Linux: ``nice`` is per thread); best effort."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as e:  # pragma: no cover - e.g. a seccomp profile refusing setpriority
        log.debug("preload: cannot set nice %d: %s", nice, e)


def start_preload(modules: Sequence[str], *, nice: int = 0, name: str = "tdxfl-preload") -> threading.Thread:
    """Import ``modules`` in order in a new daemon thread; return the (started) thread.

    ``nice`` > 0 lowers the thread's CPU priority (on Linux, for this thread and the threads the
    imported libraries start from it), so the import soaks up idle CPU without slowing the
    processes that are busy. A module that fails to import is logged at debug level and the rest
    are still tried.
    """

    def run() -> None:
        _set_thread_nice(nice)
        t0 = time.monotonic()
        for module in modules:
            try:
                importlib.import_module(module)
            except Exception as e:
                log.debug("preload of %s failed: %r", module, e)
        log.debug("preloaded %s in %.2fs", ", ".join(modules), time.monotonic() - t0)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
