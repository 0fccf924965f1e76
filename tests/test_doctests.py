"""The examples in the docstrings run and give what they show (they are documentation a user
copies; one that drifted from the code is a wrong manual page)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import sorter

MODULES = sorted(m.name for m in pkgutil.walk_packages(sorter.__path__, "sorter.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, (
        f"{name}: {result.failed} of {result.attempted} docstring examples failed "
        f"(see them: python -m pytest --doctest-modules {module.__file__})"
    )
