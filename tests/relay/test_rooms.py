"""relay.core.rooms: who is where, kept both ways, without sockets."""

from __future__ import annotations

from relay.core.rooms import Registry


def test_connect_join_leave_disconnect() -> None:
    reg = Registry()
    a = reg.connect("a", "alice")
    reg.connect("b", None)
    assert len(reg) == 2 and reg.get("a") is a and reg.get("zz") is None
    assert a.as_dict() == {"sid": "a", "user": "alice"}
    assert reg.join("a", "r") is True
    assert reg.join("a", "r") is False  # twice changes nothing
    assert reg.join("b", "r") is True
    assert list(reg.sids("r")) == ["a", "b"] and reg.count("r") == 2
    assert [m.sid for m in reg.members("r")] == ["a", "b"]
    assert reg.occupied("r") and not reg.occupied("other") and reg.room_count() == 1
    assert reg.leave("a", "other") is False
    assert reg.leave("zz", "r") is False
    assert reg.leave("a", "r") is True and reg.leave("a", "r") is False
    assert list(reg.sids("r")) == ["b"]
    reg.join("a", "r")
    assert list(reg.sids("r")) == ["b", "a"]  # join order, rejoining goes last


def test_disconnect_leaves_every_room_and_forgets_empty_ones() -> None:
    reg = Registry()
    reg.connect("a", "alice")
    reg.connect("b", "bob")
    for room in ("r2", "r1", "r3"):
        reg.join("a", room)
    reg.join("b", "r1")
    member, rooms = reg.disconnect("a")
    assert member is not None and member.sid == "a" and member.rooms == set()
    assert rooms == ["r1", "r2", "r3"]
    assert reg.room_count() == 1 and list(reg.sids("r1")) == ["b"]
    assert reg.count("r2") == 0 and reg.sids("r2") == {}
    assert reg.disconnect("a") == (None, [])
    assert reg.get("a") is None and len(reg) == 1


def test_users_map_to_all_their_connections() -> None:
    reg = Registry()
    reg.connect("a1", "alice")
    reg.connect("a2", "alice")
    reg.connect("n", None)
    assert reg.sids_of_user("alice") == ["a1", "a2"]
    assert reg.sids_of_user("bob") == []
    reg.disconnect("a1")
    assert reg.sids_of_user("alice") == ["a2"]
    reg.disconnect("a2")
    assert reg.sids_of_user("alice") == []
    assert reg._users == {}  # no empty entry left behind


def test_rooms_named_like_sids_or_users_are_just_rooms() -> None:
    reg = Registry()
    reg.connect("victim", "vic")
    reg.connect("spy", None)
    reg.join("spy", "victim")
    reg.join("spy", "vic")
    assert list(reg.sids("victim")) == ["spy"]
    assert list(reg.sids("vic")) == ["spy"]
    assert reg.sids_of_user("vic") == ["victim"]
