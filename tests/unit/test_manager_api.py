"""Unit tests for rhizomorph/protocol/manager_api.py: the manager's methods and their schemas."""

from __future__ import annotations

import inspect

import pytest

from rhizomorph.gateway.manager import WorkspaceManager
from rhizomorph.protocol import manager_api


def test_the_table_names_exactly_the_managers_methods():
    for name in manager_api.METHODS:
        method = getattr(WorkspaceManager, name)
        assert inspect.iscoroutinefunction(method), name


@pytest.mark.parametrize("name", list(manager_api.METHODS))
def test_every_schema_has_hyphas_shape_and_matches_the_signature(name):
    schema = manager_api.schema(name)
    assert set(schema) == {"name", "description", "parameters"}
    assert schema["name"] == name and schema["description"]
    parameters = schema["parameters"]
    assert parameters["type"] == "object"
    assert set(parameters["required"]) <= set(parameters["properties"])
    # Each parameter is one the method takes (after the caller's identity), in the same order.
    signature = inspect.signature(getattr(WorkspaceManager, name))
    taken = [
        p for p in list(signature.parameters)[2:] if signature.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD
    ]
    assert list(parameters["properties"]) == taken
    # What the method cannot do without is marked required (echo and log are lenient: Hypha requires them).
    needed = [p for p in taken if signature.parameters[p].default is inspect.Parameter.empty]
    assert set(needed) <= set(parameters["required"])
    for prop in parameters["properties"].values():
        assert prop["description"]


def test_get_service_schema_documents_the_modes_and_case_conversion():
    config = manager_api.schema("get_service")["parameters"]["properties"]["config"]
    assert {"mode", "timeout", "case_conversion", "select_timeout"} <= set(config["properties"])
    assert "min_load" in config["properties"]["mode"]["description"]
    assert config["properties"]["case_conversion"]["enum"] == ["camel", "snake", "camel+snake", "snake+camel"]


def test_builtin_schemas_are_named_by_their_last_part():
    assert manager_api.schema("message_cache.set", manager_api.BUILTIN_METHODS)["name"] == "set"
    assert manager_api.schema("ping", manager_api.BUILTIN_METHODS)["parameters"]["required"] == ["msg"]
