"""``relay loadtest``: a client swarm that counts every delivery, exactly.

Modules: :mod:`protocol` (Engine.IO v4 / Socket.IO v5 framing), :mod:`clients` (websocket and
long-polling connections), :mod:`engine` (one worker's swarm), :mod:`stats` (loss, duplicate and
order accounting, HDR histograms), :mod:`workers` (processes, phases, exact merge),
:mod:`scenario` (options and TOML), :mod:`report` (table, JSON, HTML).
"""
