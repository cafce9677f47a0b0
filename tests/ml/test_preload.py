"""Background preloading of the ML stack."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from tdxfl.ml.preload import dataset_modules, framework_modules, start_preload, training_modules


def test_module_lists() -> None:
    assert framework_modules("keras") == ("tdxfl.ml.models", "tdxfl.ml.keras_adapter")
    assert framework_modules("jax") == ()
    assert dataset_modules("digits") == dataset_modules("Digits") == ("sklearn.datasets", "sklearn.model_selection")
    assert dataset_modules("cifar10") == ()
    # data set first: load_dataset runs before make_adapter in every party
    assert training_modules("keras", "digits") == dataset_modules("digits") + framework_modules("keras")


def test_imports_in_background_and_survives_failures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tdxfl.ml.preload")
    t = start_preload(["tdxfl_no_such_module", "json"], name="test-preload")
    assert t.daemon and t.name == "test-preload"
    t.join(30)
    assert not t.is_alive()
    assert "json" in sys.modules
    assert "preload of tdxfl_no_such_module failed" in caplog.text


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="needs os.getpriority")
def test_nice_applies_to_the_preload_thread_only() -> None:
    code = (
        "import os, threading, time\n"
        "from tdxfl.ml import preload\n"
        "seen = []\n"
        "real = preload._set_thread_nice\n"
        "def spy(n):\n"
        "    real(n); seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))\n"
        "preload._set_thread_nice = spy\n"
        "base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())\n"
        "preload.start_preload(['json'], nice=5).join(30)\n"
        "assert seen == [min(base + 5, 19)], (base, seen)\n"
        "assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_keras_preload_then_main_thread_import() -> None:
    """The main thread imports what the preload thread is importing: it waits, no deadlock."""
    code = (
        "from tdxfl.ml.preload import start_preload, training_modules\n"
        "t = start_preload(training_modules('keras', 'digits'))\n"
        "from tdxfl.ml.data import load_dataset\n"
        "from tdxfl.ml.factory import make_adapter\n"
        "d = load_dataset('digits')\n"
        "a = make_adapter('keras', 'mlp', d.input_shape, d.num_classes)\n"
        "t.join(60)\n"
        "assert 0.0 <= a.evaluate(d.x_test, d.y_test)[1] <= 1.0\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=180, env=env)
