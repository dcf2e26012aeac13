"""Unit tests for rhizomorph/protocol/service_table.py: service ids, client ownership, services, visibility."""

from __future__ import annotations

import random

import pytest

from rhizomorph.protocol.service_table import (
    MISSING,
    ClientRecord,
    RegistryError,
    Selection,
    ServiceQuery,
    ServiceTable,
    full_service_id,
    is_probing,
    parse_mode,
    parse_service_id,
    pick_by_values,
)


def record(worker: str = "w1", generation: str = "g1", workspace: str = "ws1", user: str = "u1") -> ClientRecord:
    return ClientRecord(worker_id=worker, generation=generation, workspace=workspace, user_id=user)


def table_with(*addresses: str, worker: str = "w1", **kwargs) -> ServiceTable:
    table = ServiceTable(**kwargs)
    for address in addresses:
        table.claim(address, record(worker=worker, workspace=address.split("/", 1)[0]), supersede=False)
    return table


def svc(name: str, visibility: str | None = None, **extra) -> dict:
    info: dict = {"id": name, "name": name, "type": extra.pop("type", "generic")}
    config = dict(extra.pop("config", {}))
    if visibility is not None:
        config["visibility"] = visibility
    if config:
        info["config"] = config
    info.update(extra)
    return info


def ids(infos: list[dict]) -> list[str]:
    return [info["id"] for info in infos]


# -- parse_service_id -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "service_id, expected",
    [
        ("echo", ServiceQuery("me", "*", "echo")),
        ("ws2/echo", ServiceQuery("ws2", "*", "echo")),
        ("prov:echo", ServiceQuery("me", "prov", "echo")),
        ("ws2/prov:echo", ServiceQuery("ws2", "prov", "echo")),
        ("ws2/prov:echo@my-app", ServiceQuery("ws2", "prov", "echo")),
        ("echo@my-app", ServiceQuery("me", "*", "echo")),
        ("ws2/*:echo", ServiceQuery("ws2", "*", "echo")),
        ("public/echo", ServiceQuery("public", "*", "echo")),
    ],
)
def test_parse_service_id(service_id, expected):
    assert parse_service_id(service_id, "me") == expected


def test_parse_service_id_exact_only_with_a_client():
    assert parse_service_id("ws/c:echo", "me").exact is True
    assert parse_service_id("ws/echo", "me").exact is False
    assert parse_service_id("echo", "me").exact is False


@pytest.mark.parametrize("service_id", ["*/echo", "*/prov:echo", "*/echo@app"])
def test_parse_service_id_refuses_star_workspace(service_id):
    with pytest.raises(RegistryError, match="workspace '\\*'"):
        parse_service_id(service_id, "me")


@pytest.mark.parametrize("service_id", ["", "ws/", "ws/prov:", "prov:", "ws/a/b", "ws/a/b:c", "@app"])
def test_parse_service_id_refuses_malformed(service_id):
    with pytest.raises(RegistryError):
        parse_service_id(service_id, "me")


@pytest.mark.parametrize("service_id", [None, 5, ["echo"]])
def test_parse_service_id_refuses_non_strings(service_id):
    with pytest.raises(RegistryError, match="non-empty string"):
        parse_service_id(service_id, "me")


# -- full_service_id --------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["echo", "ws1/echo", "c1:echo", "ws1/c1:echo", "ws1/c1:echo@app", "echo@app"])
def test_full_service_id(raw):
    assert full_service_id({"id": raw}, "ws1/c1") == "ws1/c1:echo"


def test_full_service_id_refuses_other_workspace():
    with pytest.raises(RegistryError, match="workspace ws2 from workspace ws1"):
        full_service_id({"id": "ws2/c1:echo"}, "ws1/c1")
    with pytest.raises(RegistryError, match="workspace ws2"):
        full_service_id({"id": "ws2/echo"}, "ws1/c1")


def test_full_service_id_refuses_other_client():
    with pytest.raises(RegistryError, match="client c2 from client c1"):
        full_service_id({"id": "c2:echo"}, "ws1/c1")
    with pytest.raises(RegistryError, match="client c2"):
        full_service_id({"id": "ws1/c2:echo"}, "ws1/c1")


@pytest.mark.parametrize("info", [{}, {"id": ""}, {"id": None}, {"id": 3}])
def test_full_service_id_needs_string_id(info):
    with pytest.raises(RegistryError, match="string 'id'"):
        full_service_id(info, "ws1/c1")


@pytest.mark.parametrize("raw", ["c1:", "ws1/c1:", "a*b", "c1:a:b", "ws1/a/b", "ws1/"])
def test_full_service_id_refuses_bad_names(raw):
    with pytest.raises(RegistryError):
        full_service_id({"id": raw}, "ws1/c1")


# -- clients ----------------------------------------------------------------------------------


def test_claim_new_address():
    table = ServiceTable()
    assert table.claim("ws1/c1", record(), supersede=False) is None
    assert table.locate("ws1/c1") == "w1"
    assert table.locate("ws1/nobody") is None


def test_claim_without_supersede_keeps_existing_owner():
    table = ServiceTable()
    first = record(worker="w1", generation="g1")
    table.claim("ws1/c1", first, supersede=False)
    previous = table.claim("ws1/c1", record(worker="w2", generation="g2"), supersede=False)
    assert previous is first
    assert table.locate("ws1/c1") == "w1"
    assert table.clients["ws1/c1"].generation == "g1"


def test_claim_with_supersede_replaces_owner():
    table = ServiceTable()
    first = record(worker="w1", generation="g1")
    table.claim("ws1/c1", first, supersede=False)
    previous = table.claim("ws1/c1", record(worker="w2", generation="g2"), supersede=True)
    assert previous is first
    assert table.locate("ws1/c1") == "w2"


def test_release_removes_client_and_its_services():
    table = table_with("ws1/c1", "ws1/c2")
    table.register("ws1/c1", svc("a"))
    table.register("ws1/c1", svc("b"))
    table.register("ws1/c2", svc("a"))

    removed = table.release("ws1/c1", "g1")

    assert sorted(r.full_id for r in removed) == ["ws1/c1:a", "ws1/c1:b"]
    assert table.locate("ws1/c1") is None
    assert set(table.services) == {"ws1/c2:a"}
    assert "ws1/c1" not in table.by_owner


def test_release_with_stale_generation_returns_none_and_keeps_everything():
    table = ServiceTable()
    table.claim("ws1/c1", record(generation="old"), supersede=False)
    table.claim("ws1/c1", record(worker="w2", generation="new"), supersede=True)
    table.register("ws1/c1", svc("a"))

    assert table.release("ws1/c1", "old") is None
    assert table.locate("ws1/c1") == "w2"
    assert "ws1/c1:a" in table.services

    assert [r.full_id for r in table.release("ws1/c1", "new")] == ["ws1/c1:a"]


def test_release_unknown_address_returns_none():
    assert ServiceTable().release("ws1/ghost", "g1") is None


def test_release_client_without_services_returns_empty_list():
    table = table_with("ws1/c1")
    assert table.release("ws1/c1", "g1") == []


def test_release_worker_forgets_only_that_workers_clients():
    table = ServiceTable()
    table.claim("ws1/a", record(worker="w1", generation="ga"), supersede=False)
    table.claim("ws1/b", record(worker="w1", generation="gb"), supersede=False)
    table.claim("ws1/c", record(worker="w2", generation="gc"), supersede=False)
    table.register("ws1/a", svc("s1"))
    table.register("ws1/c", svc("s2"))

    gone = table.release_worker("w1")

    assert set(gone) == {"ws1/a", "ws1/b"}
    assert [r.full_id for r in gone["ws1/a"]] == ["ws1/a:s1"]
    assert gone["ws1/b"] == []
    assert set(table.clients) == {"ws1/c"}
    assert set(table.services) == {"ws1/c:s2"}
    assert table.release_worker("w-unknown") == {}


# -- register / unregister --------------------------------------------------------------------


def test_register_requires_a_claimed_client():
    table = ServiceTable()
    with pytest.raises(RegistryError, match="not connected"):
        table.register("ws1/c1", svc("echo"))
    assert table.services == {}


def test_register_stores_full_id_and_workspace():
    table = table_with("ws1/c1")
    info = svc("echo", "public", description="d")
    rec, previous = table.register("ws1/c1", info)
    assert previous is None
    assert rec.full_id == "ws1/c1:echo"
    assert rec.owner == "ws1/c1"
    assert rec.workspace == "ws1"
    assert rec.info["id"] == "ws1/c1:echo"
    assert rec.info["config"] == {"visibility": "public", "workspace": "ws1"}
    assert rec.info["description"] == "d"
    assert table.get("ws1/c1:echo") is rec
    # The caller's dict is not modified.
    assert info == svc("echo", "public", description="d")


def test_register_default_visibility_is_protected():
    table = table_with("ws1/c1")
    rec, _ = table.register("ws1/c1", svc("echo"))
    assert rec.visibility == "protected"


def test_register_overrides_client_supplied_workspace_in_config():
    table = table_with("ws1/c1")
    rec, _ = table.register("ws1/c1", svc("echo", config={"workspace": "evil"}))
    assert rec.info["config"]["workspace"] == "ws1"
    assert rec.workspace == "ws1"


def test_register_refuses_foreign_ids():
    table = table_with("ws1/c1")
    with pytest.raises(RegistryError):
        table.register("ws1/c1", {"id": "ws2/c1:echo"})
    with pytest.raises(RegistryError):
        table.register("ws1/c1", {"id": "c2:echo"})
    assert table.services == {}


def test_register_again_replaces_and_returns_previous():
    table = table_with("ws1/c1")
    first, _ = table.register("ws1/c1", svc("echo", "protected"))
    second, previous = table.register("ws1/c1", svc("echo", "public"))
    assert previous is first
    assert table.get("ws1/c1:echo") is second
    assert second.visibility == "public"
    assert table.by_owner["ws1/c1"] == {"ws1/c1:echo"}


def test_max_services_per_client():
    table = table_with("ws1/c1", "ws1/c2", max_services_per_client=2)
    table.register("ws1/c1", svc("a"))
    table.register("ws1/c1", svc("b"))
    with pytest.raises(RegistryError, match="limit of 2 services"):
        table.register("ws1/c1", svc("c"))
    assert "ws1/c1:c" not in table.services
    # Replacing an existing service does not count against the limit.
    table.register("ws1/c1", svc("a", "public"))
    # The limit is per client.
    table.register("ws1/c2", svc("c"))
    # Unregistering frees a slot.
    table.unregister("ws1/c1", "b")
    table.register("ws1/c1", svc("c"))
    assert sorted(table.by_owner["ws1/c1"]) == ["ws1/c1:a", "ws1/c1:c"]


@pytest.mark.parametrize("service_id", ["echo", "c1:echo", "ws1/c1:echo", "ws1/echo", "echo@app"])
def test_unregister_own_service(service_id):
    table = table_with("ws1/c1")
    table.register("ws1/c1", svc("echo"))
    rec = table.unregister("ws1/c1", service_id)
    assert rec.full_id == "ws1/c1:echo"
    assert table.services == {}
    assert table.by_owner["ws1/c1"] == set()


def test_unregister_someone_elses_service_is_refused():
    table = table_with("ws1/c1", "ws1/c2")
    table.register("ws1/c2", svc("echo"))
    with pytest.raises(RegistryError, match="belongs to another client"):
        table.unregister("ws1/c1", "ws1/c2:echo")
    with pytest.raises(RegistryError, match="belongs to another client"):
        table.unregister("ws1/c1", "c2:echo")
    # A bare name means the caller's own service, not c2's.
    with pytest.raises(RegistryError, match="Service not found"):
        table.unregister("ws1/c1", "echo")
    assert "ws1/c2:echo" in table.services


def test_unregister_unknown_service():
    table = table_with("ws1/c1")
    with pytest.raises(RegistryError, match="Service not found: nope"):
        table.unregister("ws1/c1", "nope")


# -- find -------------------------------------------------------------------------------------


@pytest.fixture
def multi():
    """ws1 has protected/public/unlisted services; ws2 is another workspace."""
    table = table_with("ws1/p1", "ws1/p2", "ws2/q", "public/r1", "public/r2")
    table.register("ws1/p1", svc("prot"))
    table.register("ws1/p1", svc("pub", "public"))
    table.register("ws1/p1", svc("unl", "unlisted"))
    table.register("ws1/p1", svc("auth", config={"authorized_workspaces": ["ws3"]}))
    table.register("ws1/p1", svc("dup"))
    table.register("ws1/p2", svc("dup"))
    table.register("ws2/q", svc("prot"))
    table.register("public/r1", svc("shared", "public"))
    table.register("public/r2", svc("shared", "public"))
    return table


def test_find_exact_and_by_name_in_own_workspace(multi):
    assert multi.find("ws1/p1:prot", "ws1", set()).full_id == "ws1/p1:prot"
    assert multi.find("prot", "ws1", set()).full_id == "ws1/p1:prot"
    assert multi.find("p1:prot", "ws1", set()).full_id == "ws1/p1:prot"
    assert multi.find("ws1/prot", "ws1", set()).full_id == "ws1/p1:prot"
    # A bare name resolves in the caller's workspace.
    assert multi.find("prot", "ws2", set()).full_id == "ws2/q:prot"


def test_find_protected_from_another_workspace_is_denied_in_hyphas_words(multi):
    for service_id in ("ws1/p1:prot", "ws1/prot"):
        with pytest.raises(RegistryError) as refused:
            multi.find(service_id, "ws2", set())
        assert str(refused.value) == "Permission denied for non-public service in workspace ws1"


def test_find_protected_with_read_access(multi):
    assert multi.find("ws1/p1:prot", "ws2", {"ws1"}).full_id == "ws1/p1:prot"
    assert multi.find("ws1/prot", "ws2", {"ws1"}).full_id == "ws1/p1:prot"


def test_find_protected_with_authorized_workspaces(multi):
    assert multi.find("ws1/p1:auth", "ws3", set()).full_id == "ws1/p1:auth"
    with pytest.raises(RegistryError, match="Permission denied for non-public service in workspace ws1"):
        multi.find("ws1/p1:auth", "ws2", set())


def test_find_public_from_anywhere(multi):
    assert multi.find("ws1/p1:pub", "ws2", set()).full_id == "ws1/p1:pub"
    assert multi.find("ws1/pub", "ws-anon", set()).full_id == "ws1/p1:pub"


def test_find_unlisted_in_own_workspace(multi):
    assert multi.find("unl", "ws1", set()).full_id == "ws1/p1:unl"


def test_find_unlisted_by_id_from_another_workspace(multi):
    assert multi.find("ws1/p1:unl", "ws2", set()).full_id == "ws1/p1:unl"


def test_find_unknown_service_in_hyphas_words(multi):
    # Hypha normalises the id: workspace, client (or *), name, @app (or *).
    cases = {
        ("ws1/p1:nope", "ws1"): "Service not found: ws1/p1:nope@*",
        ("nope", "ws1"): "Service not found: ws1/*:nope@*",
        ("ws9/nope@my-app", "ws1"): "Service not found: ws9/*:nope@my-app",
    }
    for (service_id, workspace), message in cases.items():
        with pytest.raises(RegistryError) as refused:
            multi.find(service_id, workspace, set())
        assert str(refused.value) == message


def test_find_multiple_matches_is_an_error_in_exact_mode(multi):
    with pytest.raises(RegistryError, match="Multiple services found for dup: ws1/p1:dup, ws1/p2:dup"):
        multi.find("dup", "ws1", set())
    with pytest.raises(RegistryError, match="Multiple services"):
        multi.find("dup", "ws1", set(), mode="exact")


def test_find_modes_first_last_random(multi):
    assert multi.find("dup", "ws1", set(), mode="first").full_id == "ws1/p1:dup"
    assert multi.find("dup", "ws1", set(), mode="last").full_id == "ws1/p2:dup"
    seen = {multi.find("dup", "ws1", set(), mode="random").full_id for _ in range(200)}
    assert seen == {"ws1/p1:dup", "ws1/p2:dup"}


def test_find_defaults_to_random_in_public_workspace(multi):
    seen = {multi.find("public/shared", "ws1", set()).full_id for _ in range(200)}
    assert seen == {"public/r1:shared", "public/r2:shared"}
    with pytest.raises(RegistryError, match="Multiple services"):
        multi.find("public/shared", "ws1", set(), mode="exact")


def test_find_exact_id_is_not_ambiguous(multi):
    assert multi.find("ws1/p2:dup", "ws1", set()).full_id == "ws1/p2:dup"


def test_find_only_counts_visible_candidates():
    table = table_with("ws1/a", "ws1/b")
    table.register("ws1/a", svc("x"))  # protected
    table.register("ws1/b", svc("x", "public"))
    # From outside, only the public one matches, so there is no ambiguity.
    assert table.find("ws1/x", "ws2", set()).full_id == "ws1/b:x"
    with pytest.raises(RegistryError, match="Multiple"):
        table.find("ws1/x", "ws1", set())


def test_find_does_not_match_name_suffixes():
    table = table_with("ws1/a")
    table.register("ws1/a", svc("xecho"))
    with pytest.raises(RegistryError, match="Service not found"):
        table.find("echo", "ws1", set())


def test_find_after_release_is_not_found(multi):
    multi.release("ws1/p1", "g1")
    with pytest.raises(RegistryError, match="Service not found"):
        multi.find("ws1/p1:pub", "ws2", set())
    assert multi.find("dup", "ws1", set()).full_id == "ws1/p2:dup"


# -- list -------------------------------------------------------------------------------------


def test_list_defaults_to_callers_workspace(multi):
    assert ids(multi.list("ws2", set())) == ["ws2/q:prot"]
    # Whether an unlisted service shows up in its own workspace is test_list_hides_unlisted_... .
    listed = [i for i in ids(multi.list("ws1", set())) if i != "ws1/p1:unl"]
    assert listed == ["ws1/p1:auth", "ws1/p1:dup", "ws1/p1:prot", "ws1/p1:pub", "ws1/p2:dup"]


def test_list_returns_copies_of_info(multi):
    [info] = multi.list("ws2", set())
    assert info == {"id": "ws2/q:prot", "name": "prot", "type": "generic", "config": {"workspace": "ws2"}}
    info["id"] = "mutated"
    assert multi.get("ws2/q:prot").info["id"] == "ws2/q:prot"


def test_list_other_workspace_shows_only_public(multi):
    assert ids(multi.list("ws2", set(), "ws1")) == ["ws1/p1:pub"]
    assert ids(multi.list("ws2", set(), {"workspace": "ws1"})) == ["ws1/p1:pub"]


def test_list_other_workspace_with_read_access(multi):
    assert ids(multi.list("ws2", {"ws1"}, "ws1")) == ids(multi.list("ws1", set()))


def test_list_all_workspaces_shows_public_and_own(multi):
    assert ids(multi.list("ws2", set(), "*")) == ["public/r1:shared", "public/r2:shared", "ws1/p1:pub", "ws2/q:prot"]


def test_list_pattern(multi):
    assert ids(multi.list("ws1", set(), "ws1/p2:*")) == ["ws1/p2:dup"]
    # Without '/', a pattern is prefixed with the caller's workspace.
    assert ids(multi.list("ws1", set(), "*:dup")) == ["ws1/p1:dup", "ws1/p2:dup"]
    assert ids(multi.list("ws2", set(), "*:dup")) == []
    assert ids(multi.list("ws1", set(), "p1:pu*")) == ["ws1/p1:pub"]
    assert ids(multi.list("ws1", set(), "*/*:dup")) == ["ws1/p1:dup", "ws1/p2:dup"]
    # A pattern across workspaces still hides protected services of others.
    assert ids(multi.list("ws2", set(), "*/*:prot")) == ["ws2/q:prot"]
    assert ids(multi.list("ws2", set(), "ws1/*")) == ["ws1/p1:pub"]


def test_list_dict_filters(multi):
    assert ids(multi.list("ws1", set(), {"client_id": "p2"})) == ["ws1/p2:dup"]
    assert ids(multi.list("ws1", set(), {"service_id": "dup"})) == ["ws1/p1:dup", "ws1/p2:dup"]
    assert ids(multi.list("ws1", set(), {"visibility": "public"})) == ["ws1/p1:pub"]
    assert ids(multi.list("ws1", set(), {"workspace": "*", "service_id": "shared"})) == [
        "public/r1:shared",
        "public/r2:shared",
    ]
    assert ids(multi.list("ws1", set(), {"workspace": None, "client_id": "p2"})) == ["ws1/p2:dup"]
    assert multi.list("ws1", set(), {"client_id": "nobody"}) == []


def test_list_type_filter():
    table = table_with("ws1/c")
    table.register("ws1/c", svc("built-in", "public", type="built-in"))
    table.register("ws1/c", svc("echo", "public"))
    assert ids(table.list("ws1", set(), {"type": "built-in"})) == ["ws1/c:built-in"]
    assert ids(table.list("ws1", set(), {"type": "generic"})) == ["ws1/c:echo"]


def test_list_never_shows_unlisted_of_other_workspaces(multi):
    assert "ws1/p1:unl" not in ids(multi.list("ws2", set(), "*"))
    assert "ws1/p1:unl" not in ids(multi.list("ws2", set(), {"workspace": "ws1", "visibility": "unlisted"}))


def test_list_hides_unlisted_even_in_own_workspace(multi):
    assert "ws1/p1:unl" not in ids(multi.list("ws1", set()))


@pytest.mark.parametrize("query", [5, ["ws1"], 1.5])
def test_list_rejects_bad_query(multi, query):
    with pytest.raises(RegistryError, match="list_services query"):
        multi.list("ws1", set(), query)


# -- modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "workspace", "expected"),
    [
        (None, "ws1", Selection("exact")),
        (None, "public", Selection("random")),
        ("first", "ws1", Selection("first")),
        ("native:random", "ws1", Selection("native:random")),
        ("min_load", "ws1", Selection("min_load", "min", "get_load")),
        ("select:max:get_capacity", "ws1", Selection("select", "max", "get_capacity")),
        ("select:first_success:get_health", "ws1", Selection("select", "first_success", "get_health")),
    ],
)
def test_parse_mode(mode, workspace, expected):
    assert parse_mode(mode, workspace) == expected


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("fastest", "Invalid mode: fastest"),
        (3, "Invalid mode: 3"),
        ("select:min", "Invalid select mode format"),
        ("select:min:", "Invalid select mode format"),
        ("select:median:get_load", "Unknown selection criteria: median"),
    ],
)
def test_parse_mode_refuses(mode, message):
    with pytest.raises(RegistryError, match=message):
        parse_mode(mode, "ws1")


def test_probing_modes_are_the_managers():
    assert [is_probing(m) for m in ("min_load", "native:random", "select:min:f")] == [True] * 3
    assert [is_probing(m) for m in (None, "random", "first", "last", "exact", "bogus")] == [False] * 6
    assert parse_mode("min_load", "w").probing and parse_mode("native:random", "w").probing
    assert not parse_mode("random", "w").probing


def test_find_refuses_an_invalid_mode_even_with_one_candidate(multi):
    with pytest.raises(RegistryError, match="Invalid mode: fastest"):
        multi.find("ws1/p1:prot", "ws1", set(), mode="fastest")
    # ... but a missing service is reported first, as Hypha does.
    with pytest.raises(RegistryError, match="Service not found"):
        multi.find("nope", "ws1", set(), mode="fastest")


def test_candidates_are_the_visible_matches_in_id_order(multi):
    assert [r.full_id for r in multi.candidates("dup", "ws1", set())] == ["ws1/p1:dup", "ws1/p2:dup"]
    assert [r.full_id for r in multi.candidates("public/shared", "ws2", set())] == [
        "public/r1:shared",
        "public/r2:shared",
    ]
    with pytest.raises(RegistryError, match="Permission denied"):
        multi.candidates("ws1/dup", "ws2", set())


def test_pick_by_values_min_max_and_ties_at_random():
    rng = random.Random(7)
    assert pick_by_values([3, 1.5, 2], "min", rng) == 1
    assert pick_by_values([3, 1.5, 2], "max", rng) == 0
    ties = {pick_by_values([0, 5, 0, 0], "min", rng) for _ in range(200)}
    assert ties == {0, 2, 3}


def test_pick_by_values_skips_what_is_not_a_number():
    rng = random.Random(1)
    assert pick_by_values([MISSING, "low", True, None, float("nan"), 4], "min", rng) == 5
    assert pick_by_values([MISSING, "x", None], "min", rng) is None
    assert pick_by_values([], "max", rng) is None


def test_pick_by_values_first_success_takes_the_first_answer_of_any_kind():
    assert pick_by_values([MISSING, "ok", 0], "first_success") == 1
    assert pick_by_values([MISSING, MISSING], "first_success") is None
