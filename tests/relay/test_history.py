"""relay.core.history: offsets, bounds and replay windows, with an injected clock."""

from __future__ import annotations

from relay.core import envelope
from relay.core.history import History


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def add(history: History, room: str, clock: Clock, n: int = 1) -> list[envelope.Message]:
    out = []
    for _ in range(n):
        offset = history.next_offset(room)
        msg = envelope.build(
            id=f"{room}-{offset}",
            room=room,
            event="message",
            sender_sid=None,
            sender_user=None,
            data_json=str(offset).encode(),
            offset=offset,
            ts=clock(),
        )
        history.append(room, msg)
        out.append(msg)
    return out


def offsets(messages: list[envelope.Message]) -> list[int | None]:
    return [m.offset for m in messages]


def test_offsets_start_at_one_per_room() -> None:
    clock = Clock()
    h = History(10, 60, clock)
    assert h.latest("a") == 0 and h.next_offset("a") == 1 and "a" not in h and len(h) == 0
    add(h, "a", clock, 3)
    add(h, "b", clock, 1)
    assert (h.latest("a"), h.latest("b"), h.next_offset("a")) == (3, 1, 4)
    assert len(h) == 2 and "a" in h


def test_size_bound_keeps_the_last_n() -> None:
    clock = Clock()
    h = History(3, 60, clock)
    add(h, "r", clock, 10)
    assert h.latest("r") == 10
    assert offsets(h.page("r", 0, 100)) == [8, 9, 10]
    replay = h.replay("r", 0)
    assert offsets(replay.messages) == [8, 9, 10] and replay.recovered is False
    replay = h.replay("r", 7)
    assert offsets(replay.messages) == [8, 9, 10] and replay.recovered is True
    replay = h.replay("r", 9)
    assert offsets(replay.messages) == [10] and replay.recovered is True
    replay = h.replay("r", 10)
    assert replay.messages == [] and replay.recovered is True


def test_size_zero_keeps_offsets_but_no_messages() -> None:
    clock = Clock()
    h = History(0, 60, clock)
    add(h, "r", clock, 4)
    assert h.latest("r") == 4
    assert h.replay("r", 4).recovered is True
    replay = h.replay("r", 3)
    assert replay.messages == [] and replay.recovered is False


def test_ttl_bound_with_an_injected_clock() -> None:
    clock = Clock()
    h = History(100, 10, clock)  # 10 s
    add(h, "r", clock, 2)  # t=0: 1, 2
    clock.now += 5_000
    add(h, "r", clock, 2)  # t=5: 3, 4
    clock.now += 5_000  # t=10: 1 and 2 are exactly ttl old: gone
    replay = h.replay("r", 0)
    assert offsets(replay.messages) == [3, 4] and replay.recovered is False
    assert offsets(h.page("r", 0, 10)) == [3, 4]
    clock.now += 4_999
    assert offsets(h.page("r", 0, 10)) == [3, 4]
    clock.now += 1
    assert h.page("r", 0, 10) == []
    replay = h.replay("r", 4)  # nothing missed, though nothing is kept
    assert replay.messages == [] and replay.recovered is True
    assert h.latest("r") == 4 and h.next_offset("r") == 5


def test_replay_windows() -> None:
    clock = Clock()
    h = History(1000, 600, clock)
    add(h, "r", clock, 20)
    for since in range(0, 21):
        replay = h.replay("r", since)
        assert offsets(replay.messages) == list(range(since + 1, 21))
        assert replay.recovered is True
    # Ahead of the room (a previous life of it): everything there is, not recovered.
    replay = h.replay("r", 50)
    assert offsets(replay.messages) == list(range(1, 21)) and replay.recovered is False
    # A room with no history at all.
    assert h.replay("never", 0).recovered is True
    assert h.replay("never", 3).recovered is False and h.replay("never", 3).messages == []
    assert "never" not in h


def test_replay_windows_on_a_trimmed_log_walk_from_either_end() -> None:
    clock = Clock()
    h = History(10, 600, clock)
    add(h, "r", clock, 25)  # kept: 16..25
    for since in range(0, 30):
        replay = h.replay("r", since)
        if since > 25:
            assert offsets(replay.messages) == list(range(16, 26))
            assert replay.recovered is False
        else:
            assert offsets(replay.messages) == list(range(max(since, 15) + 1, 26))
            assert replay.recovered is (since >= 15)


def test_page() -> None:
    clock = Clock()
    h = History(10, 600, clock)
    add(h, "r", clock, 25)  # kept: 16..25
    assert offsets(h.page("r", 0, 3)) == [16, 17, 18]
    assert offsets(h.page("r", 18, 3)) == [19, 20, 21]
    assert offsets(h.page("r", 23, 100)) == [24, 25]
    assert h.page("r", 25, 10) == []
    assert h.page("r", 0, 0) == []
    assert h.page("none", 0, 10) == []
    assert [m.envelope["data"] for m in h.page("r", 20, 1)] == [21]


def test_sweep_drops_idle_rooms_and_keeps_occupied_ones() -> None:
    clock = Clock()
    h = History(100, 1, clock)
    add(h, "idle", clock, 3)
    add(h, "busy", clock, 3)
    add(h, "fresh", clock, 0)
    assert h.sweep(lambda room: False) == 0  # nothing expired yet
    clock.now += 1_000
    add(h, "fresh", clock, 1)
    dropped = h.sweep(lambda room: room == "busy")
    assert dropped == 1
    assert "idle" not in h and "busy" in h and "fresh" in h
    assert h.latest("busy") == 3 and h.page("busy", 0, 10) == []
    # A forgotten room starts counting again from 1.
    assert h.next_offset("idle") == 1
    clock.now += 1_000
    assert h.sweep(lambda room: False) == 2
    assert len(h) == 0


def test_forget_if_idle() -> None:
    clock = Clock()
    h = History(100, 1, clock)
    add(h, "r", clock, 2)
    h.forget_if_idle("r")
    assert "r" in h and h.latest("r") == 2  # still holds history
    h.forget_if_idle("never")  # unknown room: nothing happens
    clock.now += 1_000
    h.page("r", 0, 1)  # reading trims the expired messages
    h.forget_if_idle("r")
    assert "r" not in h


def test_forget_if_idle_trims_expired_history_itself() -> None:
    # The last member leaving a room whose history has expired (but was not read or swept
    # since) frees the room at once.
    clock = Clock()
    h = History(100, 1, clock)
    add(h, "r", clock, 2)
    clock.now += 1_000
    h.forget_if_idle("r")
    assert "r" not in h


def add_sized(history: History, room: str, clock: Clock, n: int, size: int) -> None:
    """``n`` messages of ``size`` bytes of data each."""
    for _ in range(n):
        offset = history.next_offset(room)
        msg = envelope.build(
            id=f"{room}-{offset}",
            room=room,
            event="message",
            sender_sid=None,
            sender_user=None,
            data_json=b'"' + b"x" * (size - 2) + b'"',
            offset=offset,
            ts=clock(),
        )
        history.append(room, msg)


def kept_bytes(history: History, room: str) -> int:
    return sum(m.size for m in history.page(room, 0, 10**6))


def test_the_global_bound_trims_the_biggest_rooms_first() -> None:
    clock = Clock()
    h = History(1000, 600, clock, max_bytes=1_000_000)
    add_sized(h, "quiet-a", clock, 10, 1000)
    add_sized(h, "quiet-b", clock, 50, 1000)
    add_sized(h, "flood", clock, 5000, 1000)  # five times the bound on its own
    assert h.bytes <= 1_000_000
    assert h.bytes == sum(kept_bytes(h, r) for r in ("quiet-a", "quiet-b", "flood"))
    # the quiet rooms are whole; the flood keeps its newest messages, a contiguous run
    assert offsets(h.page("quiet-a", 0, 100)) == list(range(1, 11))
    assert offsets(h.page("quiet-b", 0, 100)) == list(range(1, 51))
    flood = offsets(h.page("flood", 0, 10_000))
    assert flood[-1] == 5000 and flood == list(range(flood[0], 5001)) and len(flood) > 500
    assert h.evicted == 5000 - len(flood)
    # what was trimmed is not claimed as recovered
    assert h.replay("flood", 0).recovered is False
    assert h.replay("flood", flood[0] - 1).recovered is True


def test_the_global_bound_shares_what_is_left_evenly() -> None:
    clock = Clock()
    h = History(1000, 600, clock, max_bytes=400_000)
    for room in ("a", "b", "c", "d"):
        add_sized(h, room, clock, 200, 1000)  # 4 x 200 KB: twice the bound
    sizes = [kept_bytes(h, r) for r in "abcd"]
    assert sum(sizes) <= 400_000
    # within what the last room appended since the last trim (a tenth of the bound, the
    # trim's slack) and a message of each other
    assert max(sizes) - min(sizes) <= 40_000 + 1300
    assert min(sizes) >= 70_000


def test_a_room_is_known_from_its_first_member_until_it_has_neither() -> None:
    clock = Clock()
    h = History(10, 60, clock)
    h.touch("r")
    assert "r" in h and len(h) == 1 and h.latest("r") == 0
    h.forget_if_idle("r")
    assert "r" not in h
    h.touch("r")
    add(h, "r", clock, 2)
    h.touch("r")  # (a second member: nothing changes)
    assert h.latest("r") == 2


# -- epochs ------------------------------------------------------------------------------------


def test_a_room_gets_an_epoch_when_made_and_keeps_it_while_known() -> None:
    clock = Clock()
    h = History(10, 60, clock)
    assert h.epoch("r") is None  # not known: no epoch yet, and asking makes nothing
    assert "r" not in h
    epoch = h.touch("r")
    assert isinstance(epoch, str) and 10 <= len(epoch) <= 16
    assert h.epoch("r") == epoch and h.touch("r") == epoch
    add(h, "r", clock, 3)
    assert h.epoch("r") == epoch  # messages do not change it
    add(h, "other", clock)
    assert h.epoch("other") not in (None, epoch)  # one per room (made by its first message)


def test_a_forgotten_room_made_again_has_a_new_epoch() -> None:
    clock = Clock()
    h = History(10, 10, clock)
    first = h.touch("r")
    h.forget_if_idle("r")  # its last member left, no history: forgotten
    second = h.touch("r")
    assert second != first
    add(h, "r", clock, 2)
    clock.now += 10_000  # expired
    assert h.sweep(lambda room: False) == 1
    add(h, "r", clock)
    third = h.epoch("r")
    assert third not in (None, first, second) and h.latest("r") == 1


def test_each_history_draws_its_own_epochs() -> None:
    # (a restarted process is a new History)
    epochs = {History(10, 60, Clock()).touch("r") for _ in range(50)}
    assert len(epochs) == 50


def test_replay_with_the_room_s_epoch_is_a_replay_with_since() -> None:
    clock = Clock()
    h = History(10, 60, clock)
    add(h, "r", clock, 5)
    epoch = h.epoch("r")
    replay = h.replay("r", 3, epoch)
    assert offsets(replay.messages) == [4, 5] and replay.recovered is True
    assert h.replay("r", 5, epoch) == h.replay("r", 5)


def test_replay_with_another_epoch_is_everything_held_and_not_recovered() -> None:
    clock = Clock()
    h = History(3, 60, clock)
    add(h, "r", clock, 5)
    for since in (0, 1, 4, 5, 99):
        replay = h.replay("r", since, "some-other-epoch")
        assert offsets(replay.messages) == [3, 4, 5] and replay.recovered is False
    # an unknown room has no epoch a client can have seen: not recovered either
    assert h.replay("never", 0, "some-other-epoch").recovered is False
    assert h.replay("never", 0).recovered is True
