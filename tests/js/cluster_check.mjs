// The cluster's independent check: official socket.io-client connections on every relay node
// of one Redis, publishing and receiving in shared rooms while the test breaks things.
//
//   node cluster_check.mjs CONFIG_JSON
//
// CONFIG_JSON: {"urls": [node URL, ...], "rooms": [name, ...], "perNode": clients per node,
// "periodMs": each client's pause between publishes}. Client k starts on urls[k % urls.length];
// every fourth one uses HTTP long-polling, the rest WebSocket.
//
// The test (tests/cluster/test_js_cluster.py) drives it over stdin/stdout, one JSON line each:
//   it prints {"type": "running"} once every client is in every room and has received traffic;
//   stdin "wait N"  -> {"type": "progress", ...} once N more publishes were acked after it and
//                      every client is connected and in its rooms (traffic flows meanwhile);
//   stdin "refused N" -> the same once N more publishes were answered unavailable;
//   stdin "stop"    -> publishers stop, every client catches up, {"type": "report", ...}, exit 0.
// Anything unexpected (a bad answer, a deadline missed) prints {"type": "fatal"} and exits 1.
//
// Each client follows the discipline the contract gives a client without session recovery:
// it remembers per room the epoch and the last offset it saw. When its connection drops it
// connects to the next node and joins with `since` and `epoch`: what it missed is replayed
// before the ack, and an ack with another epoch (recovered false) says the room's offsets
// started again. A connected client whose room's offsets go back (Redis lost its data) joins
// the room again to read its epoch: another epoch is an epoch change, the same one means the
// message came twice or out of order. Messages that arrive while a join is unanswered are held
// and counted in the epoch its ack names.
//
// The report: per client the epoch changes and moves; counts and examples of messages lost
// (acked, not received), received twice, out of offset order, offsets skipped, and of the
// messages some clients lack only as the tail of an epoch Redis lost (allowed, if those
// clients saw that epoch change: one row per message). See the test for what each must be.

import readline from "node:readline";

import { io } from "socket.io-client";

const CONNECT_MS = 5000;
const ACK_MS = 6000; // (relay answers unavailable within its 2 s Redis deadline)
const RETRY_MS = 50;
const SETTLE_MS = 20000;
const TOTAL_MS = 110000;
const EXAMPLES = 5;

const config = JSON.parse(process.argv[2] ?? "{}");
const URLS = config.urls;
const ROOMS = config.rooms;
const PER_NODE = config.perNode ?? 4;
const PERIOD_MS = config.periodMs ?? 40;
const RUN = Math.random().toString(36).slice(2, 8);
const started = Date.now();
const clients = [];
let stopping = false;
let acked = 0;
let refused = 0; // publishes answered unavailable
const waiters = new Set();

function emit(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function fatal(message) {
  emit({ type: "fatal", message, elapsedMs: Date.now() - started });
  for (const c of clients) c.close();
  process.exit(1);
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolve once `check()` holds (re-checked whenever traffic moves, and on a 20 ms tick). */
function until(check, ms, what) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + ms;
    const look = () => {
      if (check()) {
        waiters.delete(look);
        clearInterval(timer);
        resolve();
      } else if (Date.now() > deadline) {
        waiters.delete(look);
        clearInterval(timer);
        reject(new Error(`${what}: not within ${ms} ms`));
      }
    };
    const timer = setInterval(look, 20);
    waiters.add(look);
    look();
  });
}

function progressed() {
  for (const look of [...waiters]) look();
}

class Client {
  constructor(index) {
    this.label = `c${index}-${RUN}`;
    this.home = index % URLS.length;
    this.urlIndex = this.home;
    this.transport = Math.floor(index / URLS.length) % 4 === 3 ? "polling" : "websocket";
    this.socket = null;
    this.ready = false;
    this.connects = 0;
    this.moves = [];
    this.rooms = new Map(
      ROOMS.map((room) => [
        room,
        { epoch: null, last: 0, start: 0, joining: false, held: [], log: [], epochs: [] },
      ]),
    );
    this.seen = new Map(); // data.id -> times received
    this.duplicates = [];
    this.disorder = [];
    this.notRecovered = [];
    this.epochChanges = [];
    this.published = [];
  }

  open() {
    const socket = io(URLS[this.urlIndex], {
      forceNew: true,
      transports: [this.transport],
      reconnection: false,
      timeout: CONNECT_MS,
      auth: { user: this.label },
    });
    this.socket = socket;
    socket.on("connect", () => this.onConnect(socket));
    socket.on("connect_error", (err) => this.onLost(socket, `connect_error: ${err.message}`));
    socket.on("disconnect", (reason) => this.onLost(socket, reason));
    socket.on("message", (env) => this.onMessage(socket, env));
  }

  close() {
    this.socket?.disconnect();
  }

  /** The connection is gone: try the next node (a dead node refuses, and the next is tried). */
  onLost(socket, why) {
    if (socket !== this.socket || stopping) return;
    this.ready = false;
    socket.removeAllListeners();
    socket.disconnect();
    this.socket = null;
    for (const r of this.rooms.values()) {
      // held messages of a join never answered: the join on the next connection replays them
      r.joining = false;
      r.held = [];
    }
    this.urlIndex = (this.urlIndex + 1) % URLS.length;
    this.moves.push({ why, to: URLS[this.urlIndex], atMs: Date.now() - started });
    setTimeout(() => this.open(), RETRY_MS);
  }

  async onConnect(socket) {
    this.connects += 1;
    const joins = await Promise.all(ROOMS.map((room) => this.join(socket, room, false)));
    if (socket === this.socket && joins.every(Boolean)) {
      this.ready = true;
      progressed();
    }
  }

  /**
   * Join `room` on `socket`: with since and epoch when known (a rejoin), plain when `verify`
   * (already a member: the ack names the room's epoch and latest offset) or the first time.
   * Retried while Redis is unavailable. The ack, or null when the connection went away.
   */
  async join(socket, room, verify) {
    const r = this.rooms.get(room);
    r.joining = true;
    const payload =
      verify || r.epoch === null ? { room } : { room, since: r.last, epoch: r.epoch };
    let ack = null;
    while (socket === this.socket) {
      try {
        ack = await socket.timeout(ACK_MS).emitWithAck("join", payload);
      } catch {
        ack = null; // (no answer: the connection is going, or ask again)
      }
      if (ack?.ok) break;
      if (ack && ack.error?.code !== "unavailable" && socket === this.socket) {
        fatal(`${this.label}: join ${JSON.stringify(payload)} answered ${JSON.stringify(ack)}`);
      }
      ack = null;
      await pause(RETRY_MS);
    }
    if (socket !== this.socket || ack === null) return null;
    if (r.epoch === null) {
      r.epoch = ack.epoch;
      r.start = ack.offset;
      r.last = ack.offset;
      r.epochs.push({ epoch: ack.epoch, start: ack.offset });
    } else if (ack.epoch !== r.epoch) {
      this.epochChanges.push({
        room,
        from: r.epoch,
        to: ack.epoch,
        lastOffset: r.last,
        how: verify ? "offsets went back" : "rejoin",
        recovered: ack.recovered ?? null,
        atMs: Date.now() - started,
      });
      r.epoch = ack.epoch;
      r.last = 0;
      r.epochs.push({ epoch: ack.epoch, start: 0 });
    } else if (!verify && payload.since !== undefined && ack.recovered !== true) {
      // same epoch, history (RELAY_HISTORY_SIZE) reaches back: it must say recovered
      this.notRecovered.push({ room, since: payload.since, ack });
    }
    r.joining = false;
    const held = r.held;
    r.held = [];
    for (const env of held) this.accept(r, env);
    progressed();
    return ack;
  }

  onMessage(socket, env) {
    if (socket !== this.socket) return;
    const r = this.rooms.get(env.room);
    if (r === undefined) fatal(`${this.label}: a message of room ${env.room}`);
    if (r.joining) {
      r.held.push(env);
      return;
    }
    if (r.epoch === null) fatal(`${this.label}: a message of ${env.room} before its join`);
    if (env.offset <= r.last) {
      // the room's offsets went back: its epoch changed, or this is a duplicate or disorder
      r.held.push(env);
      this.join(socket, env.room, true);
      return;
    }
    this.accept(r, env);
  }

  accept(r, env) {
    const id = env.data?.id;
    const times = (this.seen.get(id) ?? 0) + 1;
    this.seen.set(id, times);
    if (times > 1 && this.duplicates.length < 1000) {
      this.duplicates.push({ client: this.label, room: env.room, id, offset: env.offset });
    }
    if (env.offset <= r.last) {
      this.disorder.push({
        client: this.label,
        room: env.room,
        epoch: r.epoch,
        offset: env.offset,
        after: r.last,
        id,
      });
    }
    r.log.push([id, env.offset, r.epoch]);
    r.last = Math.max(r.last, env.offset);
    progressed();
  }

  /** Publish to the rooms in turn until stopped, one at a time, while connected and joined. */
  async publishLoop() {
    let n = 0;
    while (!stopping) {
      await pause(PERIOD_MS);
      const socket = this.socket;
      if (stopping || !this.ready || socket === null) continue;
      const room = ROOMS[n % ROOMS.length];
      const rec = { id: `${this.label}-${n}`, room, status: "sent", offset: null, epoch: null };
      n += 1;
      this.published.push(rec);
      let ack;
      try {
        ack = await socket.timeout(ACK_MS).emitWithAck("publish", { room, data: { id: rec.id } });
      } catch {
        rec.status = "no ack"; // (the node died with it: in doubt)
        continue;
      }
      if (ack.ok) {
        rec.status = "acked";
        rec.offset = ack.offset;
        rec.epoch = this.rooms.get(room).epoch; // (a guess: used only for a message nobody got)
        acked += 1;
        progressed();
      } else if (ack.error?.code === "unavailable") {
        rec.status = "unavailable";
        rec.why = ack.error.message;
        refused += 1;
        progressed();
      } else {
        fatal(`${this.label}: publish answered ${JSON.stringify(ack)}`);
      }
    }
  }
}

function allReady() {
  return clients.every((c) => c.ready);
}

/** After the publishers stopped: every client reads each room's latest offset, then gets there. */
async function settle() {
  const targets = [];
  for (const c of clients) {
    await until(() => c.ready, SETTLE_MS, `${c.label} connected`);
    for (const room of ROOMS) {
      const r = c.rooms.get(room);
      await until(() => !r.joining, SETTLE_MS, `${c.label} joined ${room}`);
      const ack = await c.join(c.socket, room, true);
      if (ack === null) throw new Error(`${c.label}: lost its connection while settling`);
      targets.push({ c, room, epoch: ack.epoch, offset: ack.offset });
    }
  }
  const behind = () =>
    targets.filter(({ c, room, epoch, offset }) => {
      const r = c.rooms.get(room);
      return r.joining || r.epoch !== epoch || r.last < offset;
    });
  try {
    await until(() => behind().length === 0, SETTLE_MS, "every client caught up");
    return { settled: true, behind: [] };
  } catch {
    const rows = behind().map(({ c, room, epoch, offset }) => {
      const r = c.rooms.get(room);
      return { client: c.label, room, epoch, offset, at: { epoch: r.epoch, last: r.last } };
    });
    return { settled: false, behind: rows.slice(0, EXAMPLES) };
  }
}

/**
 * Whether publish `p` may have happened though it was not acked: its node died first ("no
 * ack"), or Redis went away with it unanswered ("unavailable" for a connection lost or a
 * deadline passed while the publish was sent). An "unavailable" of a node that knew Redis was
 * down, or could not connect, was never sent: such a publish reaching anyone is a bug.
 */
function inDoubt(p) {
  if (p.status === "no ack") return true;
  if (p.status !== "unavailable") return false;
  return !/^Redis is unavailable \(|connecting to|Connection refused|not keeping up/.test(p.why);
}

/** Every check on what was published and what each client received; see the file's header. */
function analyse() {
  const sent = clients.flatMap((c) => c.published.map((p) => ({ ...p, by: c.label })));
  const byId = new Map(sent.map((p) => [p.id, p]));
  const status = {};
  for (const p of sent) status[p.status] = (status[p.status] ?? 0) + 1;

  // what every client received, and in which epoch (id -> [client, offset, epoch])
  const got = new Map();
  const ends = new Map(); // room|epoch -> highest offset anyone received or any ack named
  const note = (room, epoch, offset) => {
    const key = `${room}|${epoch}`;
    ends.set(key, Math.max(ends.get(key) ?? 0, offset));
  };
  for (const c of clients) {
    for (const [room, r] of c.rooms) {
      for (const [id, offset, epoch] of r.log) {
        if (!got.has(id)) got.set(id, []);
        got.get(id).push([c.label, offset, epoch]);
        note(room, epoch, offset);
      }
    }
  }
  const epochOf = (p) => {
    const seen = got.get(p.id);
    return seen ? seen[0][2] : p.epoch;
  };
  for (const p of sent) if (p.status === "acked") note(p.room, epochOf(p), p.offset);

  const lost = [];
  const lostWithEpoch = [];
  const offsetMismatch = [];
  const epochMismatch = [];
  const unavailableArrived = [];
  const inDoubtPartial = [];
  const inDoubtArrived = [];
  const unknown = [];
  for (const [id, seen] of got) {
    const p = byId.get(id);
    if (p === undefined) {
      unknown.push({ id, seen });
      continue;
    }
    if (p.status === "acked" && seen.some(([, offset]) => offset !== p.offset)) {
      offsetMismatch.push({ id, ack: p.offset, seen });
    }
    if (new Set(seen.map(([, offset, epoch]) => `${offset}|${epoch}`)).size > 1) {
      epochMismatch.push({ id, seen });
    }
    if (p.status === "unavailable" && !inDoubt(p)) unavailableArrived.push({ id, why: p.why, seen });
    if (inDoubt(p)) inDoubtArrived.push({ id, status: p.status, why: p.why, n: seen.length });
  }
  const changedFrom = (c, room, epoch) =>
    c.epochChanges.some((e) => e.room === room && e.from === epoch);
  const lastIn = (c, room, epoch) => {
    let last = 0;
    for (const [, offset, ep] of c.rooms.get(room).log) if (ep === epoch) last = offset;
    return last;
  };
  for (const p of sent) {
    if (p.status !== "acked" && !inDoubt(p)) continue;
    const seen = got.get(p.id) ?? [];
    if (p.status !== "acked" && seen.length === 0) continue; // (never ran: fine)
    const epoch = epochOf(p);
    const offset = p.offset ?? seen[0][1];
    const missing = clients.filter((c) => !seen.some(([label]) => label === c.label));
    const tail = [];
    for (const c of missing) {
      const row = { id: p.id, room: p.room, offset, epoch, client: c.label, status: p.status };
      // the tail of an epoch Redis lost, after the last this client got of it, and the client
      // saw the epoch change: allowed (nobody can replay what Redis no longer has)
      if (changedFrom(c, p.room, epoch) && offset > lastIn(c, p.room, epoch)) {
        tail.push(c.label);
      } else if (p.status === "acked") {
        lost.push(row);
      } else {
        inDoubtPartial.push(row);
      }
    }
    if (tail.length) {
      lostWithEpoch.push({ id: p.id, room: p.room, offset, epoch, status: p.status, tail });
    }
  }

  // per client, room and epoch: offsets 1 (or the first join's offset + 1) up to the last it
  // got, none skipped; and up to the epoch's end unless the client saw that epoch lost
  const skipped = [];
  const shortOfEnd = [];
  for (const c of clients) {
    for (const [room, r] of c.rooms) {
      for (const { epoch, start } of r.epochs) {
        const offsets = new Set(r.log.filter(([, , ep]) => ep === epoch).map(([, o]) => o));
        const end = ends.get(`${room}|${epoch}`) ?? start;
        const last = Math.max(start, ...offsets);
        for (let o = start + 1; o <= last; o += 1) {
          if (!offsets.has(o)) skipped.push({ client: c.label, room, epoch, offset: o });
        }
        if (last < end && !changedFrom(c, room, epoch)) {
          shortOfEnd.push({ client: c.label, room, epoch, last, end });
        }
      }
    }
  }

  const duplicates = clients.flatMap((c) => c.duplicates);
  const disorder = clients.flatMap((c) => c.disorder);
  const notRecovered = clients.flatMap((c) =>
    c.notRecovered.map((x) => ({ client: c.label, ...x })),
  );
  const checks = {
    lost,
    duplicates,
    disorder,
    skipped,
    shortOfEnd,
    offsetMismatch,
    epochMismatch,
    unavailableArrived,
    inDoubtPartial,
    inDoubtArrived,
    unknown,
    notRecovered,
    lostWithEpoch,
  };
  const counts = {};
  const examples = {};
  for (const [name, rows] of Object.entries(checks)) {
    counts[name] = rows.length;
    examples[name] = rows.slice(0, EXAMPLES);
  }
  const epochs = {};
  for (const room of ROOMS) {
    epochs[room] = [...new Set(clients.flatMap((c) => c.rooms.get(room).epochs.map((e) => e.epoch)))];
  }
  return {
    counts,
    examples,
    published: status,
    received: clients.reduce((n, c) => n + [...c.rooms.values()].reduce((m, r) => m + r.log.length, 0), 0),
    epochs,
    clients: clients.map((c) => ({
      label: c.label,
      home: URLS[c.home],
      transport: c.transport,
      connects: c.connects,
      moves: c.moves,
      epochChanges: c.epochChanges,
      received: Object.fromEntries([...c.rooms].map(([room, r]) => [room, r.log.length])),
    })),
  };
}

async function command(line) {
  const [verb, arg] = line.trim().split(/\s+/);
  if (verb === "wait") {
    const target = acked + Number(arg);
    await until(() => acked >= target && allReady(), 30000, `${arg} more acks, all ready`);
    emit({ type: "progress", acked, elapsedMs: Date.now() - started });
  } else if (verb === "refused") {
    const target = refused + Number(arg);
    await until(() => refused >= target, 30000, `${arg} more publishes answered unavailable`);
    emit({ type: "progress", acked, refused, elapsedMs: Date.now() - started });
  } else if (verb === "stop") {
    stopping = true;
    await Promise.all(loops);
    stopping = false; // (a client that drops now still moves on: the test killed nothing)
    const settled = await settle();
    stopping = true;
    emit({ type: "report", ...settled, ...analyse(), elapsedMs: Date.now() - started });
    for (const c of clients) c.close();
    input.close();
    process.stdin.destroy(); // (then nothing is left to wait for: the process ends by itself)
    setTimeout(() => process.exit(0), 2000).unref();
  } else {
    fatal(`unknown command ${JSON.stringify(line)}`);
  }
}

let loops = [];
let input = null;

async function main() {
  if (!Array.isArray(URLS) || !Array.isArray(ROOMS)) fatal("config: {urls: [...], rooms: [...]}");
  setTimeout(() => fatal(`still running after ${TOTAL_MS} ms`), TOTAL_MS).unref();
  for (let i = 0; i < PER_NODE * URLS.length; i += 1) clients.push(new Client(i));
  for (const c of clients) c.open();
  await until(allReady, 20000, "every client connected and in every room");
  loops = clients.map((c) => c.publishLoop());
  await until(
    () => clients.every((c) => [...c.rooms.values()].every((r) => r.log.length > 0)),
    20000,
    "every client received traffic in every room",
  );
  emit({ type: "running", elapsedMs: Date.now() - started });
  input = readline.createInterface({ input: process.stdin });
  let queue = Promise.resolve();
  input.on("line", (line) => {
    queue = queue.then(() => command(line)).catch((err) => fatal(err?.stack ?? String(err)));
  });
}

main().catch((err) => fatal(err?.stack ?? String(err)));
