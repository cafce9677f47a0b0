"""The built-in tasks: tdxfl's demos, written against the same task contract as a user's
(``build_model()``, ``load_data(path, role)``; see :mod:`tdxfl.ml.task`).

Their ``load_data`` also takes ``shard=``, a simulation option: one data set split among the
workers (``training.partition``), so a federation runs on one machine without per-site files.
"""

#: built-in task modules, by name (``tdxfl.ml.tasks.<name>``)
BUILTIN = frozenset(
    {"digits_small_cnn", "digits_mlp", "digits_small_cnn_torch", "digits_mlp_torch", "cifar10_resnet50"}
)
