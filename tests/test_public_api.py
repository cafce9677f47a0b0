"""``tdxfl``'s declared public API: every name in ``__all__`` resolves to what its module
defines, nothing private is exported, and ``import tdxfl`` stays light."""

from __future__ import annotations

import subprocess
import sys

import tdxfl
import tdxfl.errors


def test_every_exported_name_resolves_to_its_definition() -> None:
    for name in tdxfl.__all__:
        value = getattr(tdxfl, name)
        assert value is not None
        if name != "__version__":
            assert getattr(value, "__name__", name) == name, f"tdxfl.{name} is {value!r}"
            assert getattr(value, "__module__", "").startswith("tdxfl."), name


def test_all_is_sorted_public_and_complete_for_errors() -> None:
    names = [n for n in tdxfl.__all__ if n != "__version__"]
    assert names == sorted(names) and not any(n.startswith("_") for n in names)
    assert set(tdxfl.errors.__all__) <= set(tdxfl.__all__)  # every error is public
    assert all(issubclass(getattr(tdxfl.errors, n), tdxfl.errors.TdxflError) for n in tdxfl.errors.__all__)


def test_unknown_names_are_attribute_errors() -> None:
    try:
        tdxfl.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("tdxfl.no_such_thing resolved")


def test_import_tdxfl_loads_no_grpc_or_framework() -> None:
    code = "import sys, tdxfl; print(sorted(m for m in ('grpc', 'tensorflow', 'torch', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
