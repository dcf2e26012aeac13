"""``rhizomorph.client`` without hypha-rpc says which extra brings it."""

from __future__ import annotations

import importlib
import sys

import pytest


def test_import_without_hypha_rpc_names_the_client_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hypha_rpc", None)  # None in sys.modules: the import fails as if absent
    monkeypatch.delitem(sys.modules, "rhizomorph.client", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'rhizomorph\[client\]'") as caught:
        importlib.import_module("rhizomorph.client")
    assert caught.value.name == "hypha_rpc"


def test_a_missing_dependency_of_hypha_rpc_is_not_blamed_on_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("hypha_rpc")
    for name in [m for m in sys.modules if m == "hypha_rpc" or m.startswith("hypha_rpc.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "rhizomorph.client", raising=False)
    monkeypatch.setitem(sys.modules, "shortuuid", None)  # something hypha-rpc imports
    with pytest.raises(ModuleNotFoundError) as caught:
        importlib.import_module("rhizomorph.client")
    assert caught.value.name == "shortuuid" and "rhizomorph[client]" not in str(caught.value)
