"""The Faust internals the worker patches or calls (streams/faust_patches.py) are the code they were
written against: a Faust upgrade that changes one fails here, not silently in production."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from importlib.metadata import version

import pytest

from streams.faust_patches import FAUST_VERSION, PATCHED_INTERNALS


def internal(qualified_name: str) -> object:
    """`package.module.Class.attribute` -> the attribute as the class resolves it (its MRO)."""
    module_name, class_name, attribute = qualified_name.rsplit(".", 2)
    return getattr(getattr(importlib.import_module(module_name), class_name), attribute)


def fingerprint(qualified_name: str) -> str:
    return hashlib.sha256(inspect.getsource(internal(qualified_name)).encode()).hexdigest()


@pytest.mark.parametrize("qualified_name", sorted(PATCHED_INTERNALS))
def test_each_patched_faust_internal_is_the_code_it_was_written_against(qualified_name):
    assert fingerprint(qualified_name) == PATCHED_INTERNALS[qualified_name], (
        f"{qualified_name} changed (faust-streaming {version('faust-streaming')}, written against {FAUST_VERSION}):"
        " read its new source, adapt streams/faust_patches.py, then record the new fingerprint")


def test_the_installed_faust_is_the_version_the_patches_name():
    assert version("faust-streaming") == FAUST_VERSION


def test_the_worker_touches_faust_internals_only_through_the_patches_module():
    from pathlib import Path

    import streams

    internals = {name.rsplit(".", 1)[1] for name in PATCHED_INTERNALS}
    for path in Path(streams.__file__).parent.glob("*.py"):
        if path.name == "faust_patches.py":
            continue
        text = path.read_text()
        used = sorted(name for name in internals if re.search(rf"(?<!faust_patches)\.{name}\b", text))
        assert not used, f"{path.name} uses Faust internals {used} directly: go through streams/faust_patches.py"
