ABI: int

def count(
    frame: bytes,
    hot: bytes,
    local: int,
    streams: dict[int, list[object]],
    buckets: dict[int, int],
    rooms: list[int],
) -> int | tuple[int, int | None, int, int]: ...
