"""A worker's share of the registry (what its clients own) and the rebuild of a restarted registry."""

from __future__ import annotations

from rhizomorph.protocol.ownership import OwnedState, merge
from rhizomorph.protocol.service_table import ClientRecord, ServiceTable


def info(owner: str, name: str) -> dict:
    return {"id": f"{owner}:{name}", "config": {"visibility": "public", "workspace": owner.split("/")[0]}}


def test_a_share_holds_claims_and_services_as_the_registry_answered():
    owned = OwnedState()
    owned.claimed("ws/a", "g1", "u1", 10.0)
    owned.registered("ws/a", info("ws/a", "echo"))
    owned.registered("ws/a", info("ws/a", "gone"))
    owned.unregistered("ws/a", info("ws/a", "gone"))
    owned.registered("ws/nobody", info("ws/nobody", "x"))  # not claimed here: not ours
    share = owned.snapshot({"ws/a": ("g1", "u1")})
    assert share == {"clients": [("ws/a", "g1", "u1", 10.0, [info("ws/a", "echo")])], "departed": {}}


def test_a_released_client_leaves_the_share_and_an_unanswered_release_is_a_departure():
    owned = OwnedState()
    for address in ("ws/a", "ws/b"):
        owned.claimed(address, "g", "u", 1.0)
        owned.registered(address, info(address, "s"))
        owned.releasing(address, "g")
    owned.released("ws/a", "g")  # answered: the registry dropped it, the router announces it
    share = owned.snapshot({})  # neither socket is held any more
    assert share["clients"] == []
    assert share["departed"] == {"ws/b": [info("ws/b", "s")]}  # sent, never answered
    owned.forget(["ws/b"])
    assert owned.snapshot({}) == {"clients": [], "departed": {}}


def test_a_claim_whose_socket_is_not_in_the_table_yet_is_a_client():
    owned = OwnedState()
    owned.claimed("ws/a", "g2", "u", 5.0, services=[info("ws/a", "kept")])  # a reconnect keeps its services
    share = owned.snapshot({})
    assert share["clients"] == [("ws/a", "g2", "u", 5.0, [info("ws/a", "kept")])]


def test_a_held_socket_without_a_record_is_a_client_without_known_services():
    assert OwnedState().snapshot({"ws/a": ("g", "u")})["clients"] == [("ws/a", "g", "u", 0.0, [])]


def test_a_reconnect_on_the_same_worker_outlives_the_release_of_the_old_socket():
    owned = OwnedState()
    owned.claimed("ws/a", "old", "u", 1.0)
    owned.claimed("ws/a", "new", "u", 2.0)
    owned.releasing("ws/a", "old")
    owned.released("ws/a", "old")
    owned.forget(["ws/a"])
    assert owned.snapshot({"ws/a": ("new", "u")})["clients"] == [("ws/a", "new", "u", 2.0, [])]


def share(worker_id: str, epoch: int, clients: list, departed: dict | None = None) -> dict:
    return {"worker_id": worker_id, "epoch": epoch, "clients": clients, "departed": departed or {}}


def test_merge_keeps_the_later_claim_and_supersedes_the_other_socket():
    rebuild = merge(
        [
            share("w1", 3, [("ws/a", "g1", "u", 1.0, [info("ws/a", "old")]), ("ws/b", "g", "u", 1.0, [])]),
            share("w2", 2, [("ws/a", "g2", "u", 2.0, [info("ws/a", "new")])]),
        ]
    )
    assert rebuild.epoch == 4  # above every epoch a worker has seen
    assert rebuild.clients == {"ws/a": ("w2", "g2", "u", [info("ws/a", "new")]), "ws/b": ("w1", "g", "u", [])}
    assert rebuild.superseded == [("w1", "ws/a", "g1")]
    reverse = merge([share("w2", 2, [("ws/a", "g2", "u", 2.0, [])]), share("w1", 3, [("ws/a", "g1", "u", 1.0, [])])])
    assert reverse.clients["ws/a"][0] == "w2" and reverse.superseded == [("w1", "ws/a", "g1")]


def test_merge_drops_a_departure_of_a_client_another_worker_holds():
    rebuild = merge(
        [
            share("w1", 1, [], departed={"ws/a": [info("ws/a", "s")], "ws/b": []}),
            share("w2", 1, [("ws/a", "g2", "u", 9.0, [])]),
        ]
    )
    assert rebuild.departed == {"ws/b": []}
    assert merge([]).epoch == 1 and merge([]).clients == {}


def test_a_restored_table_finds_lists_and_releases_as_before():
    table = ServiceTable()
    table.restore("ws/a", ClientRecord("w1", "g", "ws", "u"), [info("ws/a", "echo")])
    assert table.locate("ws/a") == "w1"
    assert table.find("ws/a:echo", "other", set()).owner == "ws/a"
    assert [s["id"] for s in table.list("other", set(), {"workspace": "*"})] == ["ws/a:echo"]
    assert [r.full_id for r in table.release("ws/a", "g") or []] == ["ws/a:echo"]
    assert table.services == {}
