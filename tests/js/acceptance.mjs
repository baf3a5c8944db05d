// An outsider's acceptance suite for relay, written from CONTRACT.md only, driving a live relay
// with Node's official socket.io-client.
//
//   node acceptance.mjs URL TRANSPORT open
//   node acceptance.mjs URL TRANSPORT secured SECRET
//
// TRANSPORT is "websocket" or "polling" (that transport only, no upgrade). Every check runs with
// its own clients and its own deadline. The script prints one JSON line:
//   {"transport", "mode", "results": [{"name", "ok", "error"?}], "observed": {...}}
// where "observed" records what the server did where the contract leaves room for judgement.
// It exits 0 when it could run at all; the pytest side asserts on the results.

import crypto from "node:crypto";
import { io } from "socket.io-client";

const CHECK_MS = 15000;
const WAIT_MS = 8000;
const [url, transport, mode, secret] = process.argv.slice(2);
const RUN = Math.random().toString(36).slice(2, 10);
let counter = 0;
const uniq = (prefix) => `${prefix}-${RUN}-${++counter}`;
const results = [];
const observed = {};
let opened = [];

const RESERVED = [
  "connect",
  "connect_error",
  "disconnect",
  "disconnecting",
  "newListener",
  "removeListener",
  "join",
  "leave",
  "publish",
  "direct",
  "presence",
];
const ENVELOPE_KEYS = ["data", "event", "from", "id", "offset", "room", "ts"];

// ---------------------------------------------------------------- assertions

class Failure extends Error {}

function assert(cond, message) {
  if (!cond) throw new Failure(message);
}

const show = (v) => JSON.stringify(v);

function eq(actual, expected, what) {
  assert(show(actual) === show(expected), `${what}: expected ${show(expected)}, got ${show(actual)}`);
}

function keys(obj, expected, what) {
  assert(obj !== null && typeof obj === "object", `${what}: not an object: ${show(obj)}`);
  eq(Object.keys(obj).sort(), [...expected].sort(), `${what} keys (${show(obj)})`);
}

function isError(ack, code, what) {
  assert(ack && ack.ok === false, `${what}: expected an error ${code}, got ${show(ack)}`);
  keys(ack, ["ok", "error"], `${what} error ack`);
  keys(ack.error, ["code", "message"], `${what} error`);
  eq(ack.error.code, code, `${what} error code (${ack.error.message})`);
  assert(typeof ack.error.message === "string" && ack.error.message.length > 0, `${what}: empty message`);
}

function isOk(ack, what) {
  assert(ack && ack.ok === true, `${what}: expected ok, got ${show(ack)}`);
}

function isEnvelope(env, what) {
  keys(env, ENVELOPE_KEYS, `${what} envelope`);
  keys(env.from, ["sid", "user"], `${what} envelope.from`);
  assert(typeof env.id === "string" && env.id.length > 0, `${what}: id ${show(env.id)}`);
  assert(Number.isInteger(env.ts), `${what}: ts not an integer: ${show(env.ts)}`);
  assert(Math.abs(env.ts - Date.now()) < 10000, `${what}: ts ${env.ts} is not close to now ${Date.now()}`);
}

// ---------------------------------------------------------------- clients

/** Connect with `auth`; resolve with a recording socket, reject with the connect_error. */
function connect(auth = {}) {
  return new Promise((resolve, reject) => {
    const socket = io(url, {
      transports: [transport],
      auth,
      forceNew: true,
      reconnection: false,
      timeout: WAIT_MS,
    });
    opened.push(socket);
    socket.log = [];
    socket.waiters = [];
    socket.onAny((event, ...args) => {
      socket.log.push({ event, args });
      socket.waiters = socket.waiters.filter((w) => !w());
    });
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => {
      socket.close();
      reject(err);
    });
  });
}

async function refused(auth) {
  try {
    const s = await connect(auth);
    s.close();
  } catch (err) {
    return err;
  }
  throw new Failure(`connection with auth ${show(auth)} was accepted`);
}

function ack(socket, event, ...payload) {
  return socket.timeout(WAIT_MS).emitWithAck(event, ...payload);
}

/** The first recorded event (index >= from) matching; waits for it up to WAIT_MS. */
function waitEvent(socket, match, what, from = 0) {
  return new Promise((resolve, reject) => {
    const look = () => {
      for (let i = from; i < socket.log.length; i++) {
        const e = socket.log[i];
        if (match(e.event, e.args[0])) {
          clearTimeout(timer);
          resolve(e.args[0]);
          return true;
        }
      }
      return false;
    };
    const timer = setTimeout(() => reject(new Failure(`never received ${what}; log ${show(socket.log)}`)), WAIT_MS);
    if (!look()) socket.waiters.push(look);
  });
}

/** Everything the server sent this socket before now: a direct message to itself, awaited. */
async function barrier(socket) {
  const token = uniq("barrier");
  const a = await ack(socket, "direct", { to: socket.id, event: "barrier", data: token });
  isOk(a, "barrier direct");
  await waitEvent(socket, (ev, d) => ev === "barrier" && d.data === token, "barrier");
  const at = socket.log.findIndex((e) => e.event === "barrier" && e.args[0].data === token);
  return socket.log.slice(0, at);
}

const messages = (log, event = "message") => log.filter((e) => e.event === event).map((e) => e.args[0]);

/** Data whose JSON.stringify is exactly `size` bytes (UTF-8), built around `shape`. */
function sized(size, char = "x") {
  const base = { list: [1, 2.5, true, null, "a"], nested: { k: "v" }, pad: "" };
  const baseLen = Buffer.byteLength(JSON.stringify(base));
  const charLen = Buffer.byteLength(JSON.stringify(char)) - 2;
  const room = size - baseLen;
  const n = Math.floor(room / charLen);
  base.pad = char.repeat(n) + "y".repeat(room - n * charLen);
  const got = Buffer.byteLength(JSON.stringify(base));
  if (got !== size) throw new Error(`sized(${size}) built ${got} bytes`);
  return base;
}

// ---------------------------------------------------------------- JWT (HS256 by hand)

const b64url = (buf) => Buffer.from(buf).toString("base64url");

function jwt(claims, { alg = "HS256", key = secret, header = {} } = {}) {
  const head = b64url(JSON.stringify({ alg, typ: "JWT", ...header }));
  const body = b64url(JSON.stringify(claims));
  const input = `${head}.${body}`;
  if (alg === "none") return `${input}.`;
  const hash = { HS256: "sha256", HS384: "sha384", HS512: "sha512" }[alg];
  return `${input}.${b64url(crypto.createHmac(hash, key).update(input).digest())}`;
}

const now = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------- checks: open mode

const OPEN = {
  async join_ack_shape() {
    const room = uniq("join");
    const a = await connect({ user: "alice" });
    const first = await ack(a, "join", { room });
    keys(first, ["ok", "room", "offset", "epoch", "members"], "join ack");
    assert(typeof first.epoch === "string" && first.epoch.length > 0, `join ack epoch: ${show(first)}`);
    eq([first.ok, first.room, first.offset, first.members], [true, room, 0, 1], "join ack values");
    const b = await connect();
    const second = await ack(b, "join", { room, since: null });
    keys(second, ["ok", "room", "offset", "epoch", "members"], "join ack with since null");
    eq(second.epoch, first.epoch, "one room, one epoch");
    eq(second.members, 2, "members counts the joiner");
    const again = await ack(b, "join", { room });
    isOk(again, "joining twice");
    eq(again.members, 2, "joining twice changes nothing");
    const before = (await barrier(a)).filter((e) => e.event === "presence");
    eq(before.length, 1, "presence events for one join plus a repeated join");
  },

  async join_offset_is_latest() {
    const room = uniq("latest");
    const a = await connect();
    for (let i = 0; i < 3; i++) isOk(await ack(a, "publish", { room, data: i }), "publish");
    const j = await ack(a, "join", { room });
    eq(j.offset, 3, "join ack offset is the room's latest");
  },

  async join_since_replays_before_the_ack() {
    const room = uniq("since");
    const p = await connect();
    for (let i = 1; i <= 3; i++) eq((await ack(p, "publish", { room, data: `m${i}` })).offset, i, "offset");
    const cases = [
      [0, [1, 2, 3], true],
      [1, [2, 3], true],
      [3, [], true],
    ];
    for (const [since, offsets, recovered] of cases) {
      const c = await connect();
      const j = await ack(c, "join", { room, since });
      const seen = messages(c.log);
      keys(j, ["ok", "room", "offset", "epoch", "members", "recovered"], `join since ${since}`);
      eq(j.recovered, recovered, `recovered for since ${since}`);
      eq(j.offset, 3, `offset for since ${since}`);
      eq(
        seen.map((e) => e.offset),
        offsets,
        `replayed before the ack for since ${since}`,
      );
      seen.forEach((e) => {
        isEnvelope(e, "replayed");
        eq(e.room, room, "replayed room");
      });
      eq(
        seen.map((e) => e.data),
        offsets.map((o) => `m${o}`),
        "replayed data",
      );
    }
  },

  async join_since_ahead_of_the_room() {
    const room = uniq("ahead");
    const p = await connect();
    for (let i = 1; i <= 2; i++) isOk(await ack(p, "publish", { room, data: i }), "publish");
    const c = await connect();
    const j = await ack(c, "join", { room, since: 10 });
    observed.since_ahead = { ack: j, replayed: messages(c.log).map((e) => e.offset) };
    isOk(j, "join since ahead");
    eq(j.recovered, false, "recovered when since is ahead");
    eq(
      messages(c.log).map((e) => e.offset),
      [1, 2],
      "since ahead replays what the room has",
    );
  },

  async replay_keeps_event_names() {
    const room = uniq("replay-ev");
    const p = await connect({ user: "pat" });
    const sent = [];
    for (const event of ["message", "typing", "chat:edit"]) {
      sent.push(await ack(p, "publish", { room, event, data: event }));
    }
    const c = await connect();
    const j = await ack(c, "join", { room, since: 0 });
    eq(j.recovered, true, "recovered");
    eq(
      c.log.map((e) => [e.event, e.args[0].event, e.args[0].id, e.args[0].from.user]),
      sent.map((a, i) => [["message", "typing", "chat:edit"][i], ["message", "typing", "chat:edit"][i], a.id, "pat"]),
      "replayed under their own event names, before the ack",
    );
  },

  async burst_order_from_two_publishers() {
    const room = uniq("burst");
    const m = await connect();
    isOk(await ack(m, "join", { room }), "join");
    const p1 = await connect();
    const p2 = await connect();
    const n = 150;
    const acks = [];
    for (let i = 0; i < n; i++) {
      acks.push(ack(p1, "publish", { room, data: ["p1", i] }));
      acks.push(ack(p2, "publish", { room, data: ["p2", i] }));
    }
    const done = await Promise.all(acks);
    done.forEach((a) => isOk(a, "burst publish"));
    eq(
      [...done.map((a) => a.offset)].sort((x, y) => x - y),
      Array.from({ length: 2 * n }, (_, i) => i + 1),
      "acked offsets",
    );
    await waitEvent(m, (ev, d) => ev === "message" && d.offset === 2 * n, "the last burst message");
    const got = messages(await barrier(m));
    eq(
      got.map((e) => e.offset),
      Array.from({ length: 2 * n }, (_, i) => i + 1),
      "every message once, in offset order",
    );
    for (const who of ["p1", "p2"]) {
      eq(
        got.filter((e) => e.data[0] === who).map((e) => e.data[1]),
        Array.from({ length: n }, (_, i) => i),
        `${who}'s messages in the order sent`,
      );
    }
    const byId = Object.fromEntries(done.map((a) => [a.id, a.offset]));
    got.forEach((e) => eq(byId[e.id], e.offset, "ack offset matches the envelope"));
  },

  async leave_ack_shape() {
    const room = uniq("leave");
    const a = await connect();
    const b = await connect();
    isOk(await ack(a, "join", { room }), "join");
    isOk(await ack(b, "join", { room }), "join");
    const l = await ack(a, "leave", { room });
    keys(l, ["ok", "room"], "leave ack");
    eq([l.ok, l.room], [true, room], "leave ack values");
    const again = await ack(a, "leave", { room });
    keys(again, ["ok", "room"], "leave when not a member");
    const never = await ack(a, "leave", { room: uniq("never") });
    isOk(never, "leave a room never joined");
    const seenByB = (await barrier(b)).filter((e) => e.event === "presence");
    eq(
      seenByB.map((e) => e.args[0].action),
      ["leave"],
      "one leave presence for a leave plus a repeated leave",
    );
    // The leaver no longer receives the room's messages.
    isOk(await ack(b, "publish", { room, data: "after" }), "publish after leave");
    eq(messages(await barrier(a)).length, 0, "messages after leaving");
  },

  async publish_ack_and_envelope() {
    const room = uniq("pub");
    const a = await connect({ user: "alice" });
    const b = await connect();
    isOk(await ack(a, "join", { room }), "join");
    isOk(await ack(b, "join", { room }), "join");
    const t0 = Date.now();
    const p = await ack(a, "publish", { room, data: { hi: [1, "two", null] } });
    keys(p, ["ok", "id", "offset"], "publish ack");
    eq(p.offset, 1, "first offset");
    assert(typeof p.id === "string" && p.id.length > 0, "publish ack id");
    for (const [who, s] of [
      ["receiver", b],
      ["sender", a],
    ]) {
      const env = await waitEvent(s, (ev) => ev === "message", `message at the ${who}`);
      isEnvelope(env, who);
      eq(
        [env.id, env.room, env.event, env.offset, env.from, env.data],
        [p.id, room, "message", 1, { sid: a.id, user: "alice" }, { hi: [1, "two", null] }],
        `${who} envelope`,
      );
      assert(env.ts >= t0 - 2000 && env.ts <= Date.now() + 2000, `ts ${env.ts} outside the publish window`);
    }
    const anon = await ack(b, "publish", { room, event: null, data: 2, exclude_self: null });
    eq(anon.offset, 2, "second offset");
    const env2 = await waitEvent(b, (ev, d) => ev === "message" && d.offset === 2, "own message (exclude_self null)");
    eq(env2.from, { sid: b.id, user: null }, "anonymous from");
    eq(env2.event, "message", "event null counts as absent");
  },

  async publish_custom_event_and_allowed_chars() {
    const room = uniq("r_-.:@/Z9");
    const event = "ev_-.:@/Z9";
    const a = await connect();
    const j = await ack(a, "join", { room });
    isOk(j, `join ${room}`);
    const p = await ack(a, "publish", { room, event, data: "x" });
    isOk(p, "publish with a custom event");
    const env = await waitEvent(a, (ev) => ev === event, `event ${event}`);
    eq([env.event, env.id], [event, p.id], "custom event envelope");
    eq(messages(await barrier(a)).length, 0, "a custom event is not also a message");
  },

  async exclude_self() {
    const room = uniq("excl");
    const a = await connect();
    const b = await connect();
    isOk(await ack(a, "join", { room }), "join");
    isOk(await ack(b, "join", { room }), "join");
    const p = await ack(a, "publish", { room, data: 1, exclude_self: true });
    isOk(p, "publish exclude_self");
    await waitEvent(b, (ev, d) => ev === "message" && d.id === p.id, "message at the other member");
    eq(messages(await barrier(a)).length, 0, "messages at the sender with exclude_self");
  },

  async publish_without_membership() {
    const room = uniq("outsider");
    const a = await connect();
    const m = await connect();
    isOk(await ack(m, "join", { room }), "join");
    const p = await ack(a, "publish", { room, data: "from outside" });
    isOk(p, "publish by a non-member");
    await waitEvent(m, (ev, d) => ev === "message" && d.id === p.id, "message from a non-member");
    eq(messages(await barrier(a)).length, 0, "a non-member sender receives nothing");
  },

  async offsets_are_per_room() {
    const [r1, r2] = [uniq("o1"), uniq("o2")];
    const a = await connect();
    const got = [];
    for (const room of [r1, r2, r1, r2, r1]) got.push((await ack(a, "publish", { room, data: 0 })).offset);
    eq(got, [1, 1, 2, 2, 3], "offsets per room");
  },

  async direct_shapes() {
    const a = await connect({ user: "alice" });
    const bob = uniq("bob");
    const b1 = await connect({ user: bob });
    const b2 = await connect({ user: bob });
    const c = await connect();
    const d = await ack(a, "direct", { to: c.id, data: { p: 1 } });
    keys(d, ["ok", "id", "delivered"], "direct ack");
    eq([d.ok, d.delivered], [true, 1], "direct by sid");
    const env = await waitEvent(c, (ev) => ev === "message", "direct message");
    isEnvelope(env, "direct");
    eq(
      [env.id, env.room, env.offset, env.event, env.from, env.data],
      [d.id, null, null, "message", { sid: a.id, user: "alice" }, { p: 1 }],
      "direct envelope",
    );
    const u = await ack(a, "direct", { user: bob, event: "ping", data: 7 });
    eq([u.ok, u.delivered], [true, 2], "direct by user reaches every connection");
    for (const s of [b1, b2]) {
      const e = await waitEvent(s, (ev) => ev === "ping", "direct ping");
      eq([e.id, e.event, e.room], [u.id, "ping", null], "direct by user envelope");
    }
    const nullTo = await ack(a, "direct", { to: null, user: bob, event: null, data: 1 });
    eq([nullTo.ok, nullTo.delivered], [true, 2], "to null counts as absent");
    eq(
      messages(await barrier(b1)).map((e) => e.id),
      [nullTo.id],
      "event null is message",
    );
    eq((await ack(a, "direct", { to: "nosuchsid-" + RUN, data: 1 })).delivered, 0, "unknown sid");
    eq((await ack(a, "direct", { user: uniq("nobody"), data: 1 })).delivered, 0, "unknown user");
    isError(await ack(a, "direct", { to: c.id, user: bob, data: 1 }), "bad_request", "direct with to and user");
    isError(await ack(a, "direct", { data: 1 }), "bad_request", "direct with neither to nor user");
    isError(await ack(a, "direct", { to: null, user: null, data: 1 }), "bad_request", "direct with both null");
    isError(await ack(a, "direct", { user: "", data: 1 }), "bad_request", "direct to an empty user");
    isError(await ack(a, "direct", { user: "u".repeat(65), data: 1 }), "bad_request", "direct to a 65-char user");
    isError(await ack(a, "direct", { user: "has space", data: 1 }), "bad_request", "direct to a bad user name");
  },

  async direct_counts_only_live_connections() {
    const bob = uniq("bob");
    const room = uniq("live");
    const w = await connect();
    const b1 = await connect({ user: bob });
    const b2 = await connect({ user: bob });
    for (const s of [w, b1, b2]) isOk(await ack(s, "join", { room }), "join");
    const a = await connect();
    eq((await ack(a, "direct", { user: bob, data: 1 })).delivered, 2, "two live connections");
    const mark = w.log.length;
    const sid = b2.id;
    b2.disconnect(); // a clean, client-side disconnect
    await waitEvent(w, (ev, d) => ev === "presence" && d.action === "leave" && d.member.sid === sid, "leave", mark);
    eq((await ack(a, "direct", { user: bob, data: 2 })).delivered, 1, "after one disconnected");
    eq((await ack(a, "direct", { to: sid, data: 3 })).delivered, 0, "to a disconnected sid");
    eq((await ack(w, "presence", { room })).members.length, 2, "members after the disconnect");
  },

  async direct_is_never_a_room() {
    const bob = uniq("bob");
    const b = await connect({ user: bob });
    const spy = await connect();
    for (const room of [b.id, bob]) isOk(await ack(spy, "join", { room }), `join ${room}`);
    const a = await connect();
    eq((await ack(a, "direct", { to: b.id, data: "s1" })).delivered, 1, "direct to b by sid");
    eq((await ack(a, "direct", { user: bob, data: "s2" })).delivered, 1, "direct to b by user");
    eq(
      messages(await barrier(b)).map((e) => e.data),
      ["s1", "s2"],
      "b's direct messages",
    );
    eq(messages(await barrier(spy)).length, 0, "direct messages seen by a room named after b");
  },

  async presence_ack_shape() {
    const room = uniq("pres");
    const a = await connect({ user: "alice" });
    const b = await connect();
    isOk(await ack(a, "join", { room }), "join");
    isOk(await ack(b, "join", { room }), "join");
    const p = await ack(b, "presence", { room });
    keys(p, ["ok", "room", "members"], "presence ack");
    eq(p.room, room, "presence room");
    assert(Array.isArray(p.members), "members is a list");
    p.members.forEach((m) => keys(m, ["sid", "user"], "presence member"));
    const bySid = Object.fromEntries(p.members.map((m) => [m.sid, m.user]));
    eq(bySid, { [a.id]: "alice", [b.id]: null }, "presence members");
    const empty = await ack(b, "presence", { room: uniq("empty") });
    eq(empty, { ok: true, room: empty.room, members: [] }, "presence of an empty room");
  },

  async presence_events() {
    const room = uniq("pev");
    const a = await connect({ user: "alice" });
    const b = await connect({ user: "bob" });
    isOk(await ack(b, "join", { room }), "b joins");
    isOk(await ack(a, "join", { room }), "a joins");
    const joined = await waitEvent(b, (ev) => ev === "presence", "presence join");
    keys(joined, ["room", "action", "member"], "presence event");
    keys(joined.member, ["sid", "user"], "presence member");
    eq(joined, { room, action: "join", member: { sid: a.id, user: "alice" } }, "presence join");
    eq((await barrier(a)).filter((e) => e.event === "presence").length, 0, "presence for the joiner itself");
    isOk(await ack(a, "leave", { room }), "a leaves");
    const left = await waitEvent(b, (ev, d) => ev === "presence" && d.action === "leave", "presence leave");
    eq(left, { room, action: "leave", member: { sid: a.id, user: "alice" } }, "presence leave");
    eq((await barrier(a)).filter((e) => e.event === "presence").length, 0, "presence for the leaver itself");
    isOk(await ack(a, "join", { room }), "a joins again");
    const mark = b.log.length;
    const sid = a.id;
    a.disconnect();
    const gone = await waitEvent(b, (ev, d) => ev === "presence" && d.action === "leave", "presence on disconnect", mark);
    eq(gone, { room, action: "leave", member: { sid, user: "alice" } }, "disconnect is a leave");
    const p = await ack(b, "presence", { room });
    eq(
      p.members.map((m) => m.sid),
      [b.id],
      "members after a disconnect",
    );
  },

  async reserved_event_names() {
    const room = uniq("reserved");
    const a = await connect();
    for (const name of RESERVED) {
      isError(await ack(a, "publish", { room, event: name, data: 1 }), "bad_request", `publish event ${name}`);
      isError(await ack(a, "direct", { to: a.id, event: name, data: 1 }), "bad_request", `direct event ${name}`);
    }
    eq((await barrier(a)).length, 0, "events received after reserved names");
    eq((await ack(a, "publish", { room, data: 1 })).offset, 1, "reserved names took no offsets");
  },

  async room_name_limits() {
    const a = await connect();
    const r128 = `r${RUN}`.padEnd(128, "x");
    const j = await ack(a, "join", { room: r128 });
    eq([j.ok, j.room], [true, r128], "128-char room");
    isOk(await ack(a, "publish", { room: r128, data: 1 }), "publish to a 128-char room");
    isOk(await ack(a, "presence", { room: r128 }), "presence of a 128-char room");
    const bad = [r128 + "x", "", "a b", "caf\u00e9", "a#b", "a*b", "a\nb", "a?b", "a%20b"];
    for (const room of bad) {
      for (const ev of ["join", "leave", "presence"]) {
        isError(await ack(a, ev, { room }), "bad_request", `${ev} room ${show(room)}`);
      }
      isError(await ack(a, "publish", { room, data: 1 }), "bad_request", `publish room ${show(room)}`);
    }
    for (const room of [5, null, ["r"], { r: 1 }, true]) {
      isError(await ack(a, "join", { room }), "bad_request", `join room ${show(room)}`);
    }
    isError(await ack(a, "join", {}), "bad_request", "join without room");
  },

  async event_name_limits() {
    const room = uniq("evlim");
    const a = await connect();
    isOk(await ack(a, "join", { room }), "join");
    const e64 = "e".repeat(64);
    isOk(await ack(a, "publish", { room, event: e64, data: 1 }), "64-char event");
    await waitEvent(a, (ev) => ev === e64, "64-char event delivered");
    isOk(await ack(a, "direct", { to: a.id, event: e64, data: 1 }), "64-char direct event");
    for (const event of ["e".repeat(65), "", "a b", "\u00e9", 5, true, { e: 1 }]) {
      isError(await ack(a, "publish", { room, event, data: 1 }), "bad_request", `publish event ${show(event)}`);
      isError(await ack(a, "direct", { to: a.id, event, data: 1 }), "bad_request", `direct event ${show(event)}`);
    }
  },

  async user_name_limits() {
    const u64 = `u${RUN}`.padEnd(64, "_-.:@/");
    const a = await connect({ user: u64 });
    const room = uniq("users");
    isOk(await ack(a, "join", { room }), "join");
    eq((await ack(a, "presence", { room })).members, [{ sid: a.id, user: u64 }], "64-char user");
    await connect({ user: "a_-.:@/Z9" }); // every allowed punctuation
    const anon = await connect({ user: null });
    isOk(await ack(anon, "join", { room }), "user null is anonymous");
    observed.bad_user_connect = {};
    for (const user of ["u".repeat(65), "", "a b", 5]) {
      const err = await refused({ user });
      observed.bad_user_connect[show(user)] = err.data ?? err.message;
      assert(err.data && typeof err.data.code === "string", `refusal of user ${show(user)} has no data.code`);
    }
  },

  async payload_limits() {
    const room = uniq("size");
    const a = await connect();
    const b = await connect();
    isOk(await ack(b, "join", { room }), "join");
    const limit = 64 * 1024;
    for (const char of ["x", "\u00e9", "\u20ac", "\u{1F600}"]) {
      const exact = sized(limit, char);
      const p = await ack(a, "publish", { room, data: exact });
      isOk(p, `data of exactly 64 KiB as JSON (padded with ${show(char)})`);
      const got = await waitEvent(b, (ev, d) => ev === "message" && d.id === p.id, "64 KiB message");
      assert(show(got.data) === show(exact), "64 KiB data arrives intact");
      isError(await ack(a, "publish", { room, data: sized(limit + 1, char) }), "too_large", `64 KiB + 1 (${show(char)})`);
      isOk(await ack(a, "direct", { to: b.id, data: exact }), "direct of exactly 64 KiB");
      isError(await ack(a, "direct", { to: b.id, data: sized(limit + 1, char) }), "too_large", "direct of 64 KiB + 1");
    }
    const escapes = { s: '"\\\n\t\u0001'.repeat(1000) };
    const escLen = Buffer.byteLength(JSON.stringify(escapes));
    isOk(await ack(a, "publish", { room, data: escapes }), `escapes (${escLen} bytes as JSON)`);
    isError(await ack(a, "publish", { room, data: "x".repeat(300000) }), "too_large", "300 kB");
    assert(a.connected, "the sender is still connected after too_large");
    isOk(await ack(a, "join", { room }), "join after too_large");
  },

  async wrong_types_and_shapes() {
    const room = uniq("types");
    const a = await connect();
    isOk(await ack(a, "join", { room }), "join");
    const bad = [
      ["join", "lobby"],
      ["join", ["lobby"]],
      ["join", 5],
      ["join", null],
      ["join", { room, since: "1" }],
      ["join", { room, since: -1 }],
      ["join", { room, since: 1.5 }],
      ["join", { room, since: true }],
      ["leave", "lobby"],
      ["publish", { room, data: 1, exclude_self: "yes" }],
      ["publish", { room, data: 1, event: 5 }],
      ["publish", "hello"],
      ["presence", {}],
      ["presence", "lobby"],
      ["direct", { to: 5, data: 1 }],
      ["direct", { user: 5, data: 1 }],
    ];
    for (const [ev, payload] of bad) {
      isError(await ack(a, ev, payload), "bad_request", `${ev} ${show(payload)}`);
    }
    isError(await ack(a, "join"), "bad_request", "join with no argument");
    // Judgement calls, recorded: publish without data, with data null.
    observed.publish_without_data = await ack(a, "publish", { room });
    observed.publish_data_null = await ack(a, "publish", { room, data: null });
    observed.join_extra_argument = await ack(a, "join", { room }, "extra");
    observed.join_unknown_field = await ack(a, "join", { room, colour: "red" });
    assert(a.connected, "still connected after bad payloads");
  },

  async unknown_events() {
    const a = await connect();
    isError(await ack(a, "nosuchevent", { x: 1 }), "bad_request", "unknown event with an ack");
    isError(await ack(a, "nosuchevent"), "bad_request", "unknown event with no argument and an ack");
    a.emit("nosuchevent", { x: 1 });
    a.emit("publish", { room: "has space", data: 1 }); // a bad known event without an ack
    a.emit("publish", { room: uniq("noack"), data: 1 }); // a good one without an ack
    eq((await barrier(a)).length, 0, "events after unknown events without an ack");
    assert(a.connected, "still connected");
    isOk(await ack(a, "join", { room: uniq("after") }), "join after unknown events");
  },
};

// ---------------------------------------------------------------- checks: secured mode

const SECURED = {
  async no_or_bad_tokens_are_unauthorized() {
    const claims = { sub: "alice" };
    const cases = {
      "no auth": {},
      "user without token": { user: "alice" },
      "token null": { token: null },
      "empty token": { token: "" },
      garbage: { token: "not.a.jwt" },
      "wrong secret": { token: jwt(claims, { key: secret + "x" }) },
      expired: { token: jwt({ ...claims, exp: now() - 60 }) },
      "not yet valid": { token: jwt({ ...claims, nbf: now() + 600 }) },
      "alg none": { token: jwt(claims, { alg: "none" }) },
      HS512: { token: jwt(claims, { alg: "HS512" }) },
      HS384: { token: jwt(claims, { alg: "HS384" }) },
      "tampered payload": {
        token: (() => {
          const [h, , s] = jwt(claims).split(".");
          return `${h}.${b64url(JSON.stringify({ sub: "mallory" }))}.${s}`;
        })(),
      },
    };
    for (const [what, auth] of Object.entries(cases)) {
      const err = await refused(auth);
      assert(err.data, `${what}: connect_error without data (${err.message})`);
      keys(err.data, ["code", "message"], `${what}: connect_error data`);
      eq(err.data.code, "unauthorized", `${what}: code`);
    }
    observed.token_without_sub = await refused({ token: jwt({ rooms: ["x"] }) })
      .then((e) => e.data ?? e.message)
      .catch((e) => `accepted (${e.message})`);
  },

  async valid_token_sets_the_user() {
    const room = uniq("who");
    const a = await connect({ token: jwt({ sub: "alice", exp: now() + 600, nbf: now() - 5 }), user: "mallory" });
    isOk(await ack(a, "join", { room }), "join with an unrestricted token");
    eq((await ack(a, "presence", { room })).members, [{ sid: a.id, user: "alice" }], "user comes from sub");
    const p = await ack(a, "publish", { room, data: 1 });
    const env = await waitEvent(a, (ev, d) => ev === "message" && d.id === p.id, "own message");
    eq(env.from, { sid: a.id, user: "alice" }, "from.user is sub");
    const bob = uniq("bob");
    const b = await connect({ token: jwt({ sub: bob }) });
    eq((await ack(a, "direct", { user: bob, data: "hi" })).delivered, 1, "direct by token user");
    await waitEvent(b, (ev, d) => ev === "message" && d.data === "hi", "direct to a token user");
  },

  async room_patterns() {
    const lobby = uniq("lobby");
    const team = uniq("team");
    const a = await connect({ token: jwt({ sub: "carol", rooms: [lobby, `${team}:*`] }) });
    isOk(await ack(a, "join", { room: lobby }), "exact room");
    for (const room of [`${team}:a`, `${team}:a:b`, `${team}:`, `${team}:x/y@z`]) {
      isOk(await ack(a, "join", { room }), `pattern room ${room}`);
      isOk(await ack(a, "publish", { room, data: 1 }), `publish to pattern room ${room}`);
    }
    const outside = [lobby.toUpperCase(), `${lobby}x`, `x${lobby}`, team, `${team}-a`, `x${team}:a`, uniq("other")];
    for (const room of outside) {
      isError(await ack(a, "join", { room }), "forbidden", `join ${room}`);
      isError(await ack(a, "publish", { room, data: 1 }), "forbidden", `publish ${room}`);
    }
    isError(await ack(a, "join", { room: "bad name" }), "bad_request", "a bad name is still bad_request");
    observed.presence_outside_rooms = await ack(a, "presence", { room: uniq("other") });
    observed.leave_outside_rooms = await ack(a, "leave", { room: uniq("other") });
    const star = await connect({ token: jwt({ sub: "dave", rooms: ["*"] }) });
    isOk(await ack(star, "join", { room: "any:thing/at@all" }), "rooms [*]");
    const none = await connect({ token: jwt({ sub: "erin", rooms: [] }) });
    isError(await ack(none, "join", { room: lobby }), "forbidden", "rooms []");
  },
};

// ---------------------------------------------------------------- runner

async function run() {
  if (!url || !["websocket", "polling"].includes(transport) || !["open", "secured"].includes(mode)) {
    process.stderr.write("usage: node acceptance.mjs URL websocket|polling open|secured [SECRET]\n");
    process.exit(2);
  }
  const checks = mode === "open" ? OPEN : SECURED;
  const only = process.env.ACCEPTANCE_ONLY;
  for (const [name, fn] of Object.entries(checks)) {
    if (only && !only.split(",").includes(name)) continue;
    opened = [];
    let timer;
    try {
      await Promise.race([
        fn(),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Failure(`did not finish within ${CHECK_MS} ms`)), CHECK_MS);
        }),
      ]);
      results.push({ name, ok: true });
    } catch (err) {
      const error = err instanceof Failure ? err.message : String(err?.stack ?? err);
      results.push({ name, ok: false, error });
    } finally {
      clearTimeout(timer);
      for (const s of opened) s.disconnect();
    }
  }
  process.stdout.write(JSON.stringify({ transport, mode, results, observed }) + "\n");
  process.exit(0);
}

run();
