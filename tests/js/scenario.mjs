// Drive a live relay with Node's official socket.io-client and report what happened.
//
//   node scenario.mjs URL TRANSPORT SCENARIO
//
// TRANSPORT is "websocket", "polling", or "default" (no `transports` option: polling, then the
// client's own upgrade to websocket). SCENARIO is one of the keys of SCENARIOS below.
//
// The script prints one JSON line holding what the clients saw (acks, envelopes, event names)
// and exits 0; the pytest side asserts on it. Anything that never arrives fails the scenario:
// every wait has a deadline, and a missed deadline exits 1 with a message on stderr.

import { io } from "socket.io-client";

import { Expected, runScenario } from "./harness.mjs";

const WAIT_MS = 8000;
const TOTAL_MS = 25000;

const [url, transportArg, scenarioName] = process.argv.slice(2);
const sockets = [];
// Names unique to this run, so connections another run left behind never count here.
const RUN = Math.random().toString(36).slice(2, 10);

function fail(message) {
  process.stderr.write(`scenario ${scenarioName} (${transportArg}) failed: ${message}\n`);
  for (const s of sockets) s.disconnect();
  process.exit(1);
}

function transportsFor(kind) {
  if (kind === "websocket" || kind === "polling") return [kind];
  if (kind === "default") return undefined;
  return fail(`unknown transport ${JSON.stringify(kind)}; expected websocket, polling or default`);
}

/** A client that records every event it receives, in arrival order. */
class Client {
  constructor(socket) {
    this.socket = socket;
    this.events = [];
    this.waiters = [];
    socket.onAny((event, ...args) => {
      this.events.push({ event, args });
      this.waiters = this.waiters.filter((w) => !w.check());
    });
  }

  get sid() {
    return this.socket.id;
  }

  get transport() {
    return this.socket.io.engine?.transport?.name ?? null;
  }

  /** Resolve with the first recorded event (from index `from` on) that matches. */
  waitFor(what, match, from = 0) {
    return new Promise((resolve, reject) => {
      const waiter = {
        check: () => {
          const found = this.events.slice(from).find(match);
          if (found === undefined) return false;
          clearTimeout(waiter.timer);
          resolve(found);
          return true;
        },
      };
      if (waiter.check()) return;
      waiter.timer = setTimeout(
        () => reject(new Expected(`${this.label}: no ${what} within ${WAIT_MS} ms`)),
        WAIT_MS,
      );
      this.waiters.push(waiter);
    });
  }

  /** The first `event` whose envelope data equals `data` (compared as JSON). */
  message(data, event = "message") {
    const text = JSON.stringify(data);
    return this.waitFor(
      `${event} with data ${text}`,
      (e) => e.event === event && JSON.stringify(e.args[0]?.data) === text,
    ).then((e) => e.args[0]);
  }

  presence(action, sid) {
    return this.waitFor(
      `presence ${action} of ${sid}`,
      (e) =>
        e.event === "presence" && e.args[0]?.action === action && e.args[0]?.member?.sid === sid,
    ).then((e) => e.args[0]);
  }

  /** Like call(), plus how many events had arrived when the ack did (counted in its callback,
   *  before any later packet of the same polling payload is dispatched). */
  callCounting(event, payload) {
    return new Promise((resolve, reject) => {
      this.socket.timeout(WAIT_MS).emit(event, payload, (err, ack) => {
        if (err) reject(new Expected(`${this.label}: no ack for ${event} within ${WAIT_MS} ms`));
        else resolve({ ack, seen: this.events.length });
      });
    });
  }

  /** Emit with an acknowledgement; the ack is the relay's answer object. */
  call(event, payload) {
    return this.socket
      .timeout(WAIT_MS)
      .emitWithAck(event, payload)
      .catch((err) => {
        const why = `no ack for ${event} within ${WAIT_MS} ms (${err.message})`;
        throw new Expected(`${this.label}: ${why}`);
      });
  }
}

/** Connect one client; resolve once connected, reject on connect_error. */
function connect(label, { user, transport = transportArg } = {}) {
  const options = { forceNew: true, reconnection: false, timeout: WAIT_MS };
  const transports = transportsFor(transport);
  if (transports) options.transports = transports;
  if (user !== undefined) options.auth = { user };
  const socket = io(url, options);
  sockets.push(socket);
  const client = new Client(socket);
  client.label = label;
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(client));
    socket.once("connect_error", (err) =>
      reject(
        new Expected(`${label}: connect_error: ${err.message} ${JSON.stringify(err.data ?? null)}`),
      ),
    );
  });
}

/** Expect a connect_error; resolve with its message and data. */
function refused(label, auth) {
  const options = { forceNew: true, reconnection: false, timeout: WAIT_MS, auth };
  const transports = transportsFor(transportArg);
  if (transports) options.transports = transports;
  const socket = io(url, options);
  sockets.push(socket);
  return new Promise((resolve, reject) => {
    socket.once("connect", () =>
      reject(new Expected(`${label}: connected, expected a connect_error`)),
    );
    socket.once("connect_error", (err) =>
      resolve({ message: err.message, data: err.data ?? null, connected: socket.connected }),
    );
  });
}

function uniqueRoom(tag) {
  return `js:${tag}:${transportArg}:${RUN}`;
}

const SCENARIOS = {
  /** Join, presence join, publish to both, exclude_self. */
  async basic() {
    const room = uniqueRoom("basic");
    const a = await connect("alice", { user: "alice" });
    const b = await connect("bob", { user: "bob" });
    const joinA = await a.call("join", { room });
    const joinB = await b.call("join", { room });
    const presenceJoin = await a.presence("join", b.sid);

    const publish = await a.call("publish", { room, data: { n: 1, text: "héllo" } });
    const envA = await a.message({ n: 1, text: "héllo" });
    const envB = await b.message({ n: 1, text: "héllo" });

    // exclude_self: alice's n=2 reaches bob only. Bob's n=3 then reaches alice; the room's
    // messages arrive in offset order, so had n=2 reached alice it would be recorded first.
    const excluded = await a.call("publish", { room, data: { n: 2 }, exclude_self: true });
    const envB2 = await b.message({ n: 2 });
    const after = await b.call("publish", { room, data: { n: 3 } });
    await a.message({ n: 3 });
    const aData = a.events.filter((e) => e.event === "message").map((e) => e.args[0].data);
    return {
      room,
      sids: { a: a.sid, b: b.sid },
      transports: { a: a.transport, b: b.transport },
      joinA,
      joinB,
      presenceJoin,
      publish,
      envA,
      envB,
      excluded,
      envB2,
      after,
      aData,
    };
  },

  /** Custom event names, direct by sid and by user, the presence call. */
  async routing() {
    const room = uniqueRoom("routing");
    const a = await connect("alice", { user: "alice" });
    const bob = `bob-${RUN}`;
    const b1 = await connect("bob-1", { user: bob });
    const b2 = await connect("bob-2", { user: bob });
    await a.call("join", { room });
    await b1.call("join", { room });

    const custom = await a.call("publish", { room, event: "chat.line", data: { text: "hi" } });
    const customEnv = await b1.message({ text: "hi" }, "chat.line");

    const bySid = await a.call("direct", { to: b1.sid, event: "dm", data: { to: "sid" } });
    const bySidEnv = await b1.message({ to: "sid" }, "dm");

    const byUser = await a.call("direct", { user: bob, data: { to: "user" } });
    const byUserEnv1 = await b1.message({ to: "user" });
    const byUserEnv2 = await b2.message({ to: "user" });

    const unknownSid = await a.call("direct", { to: "no-such-sid", data: 1 });
    const unknownUser = await a.call("direct", { user: "nobody", data: 1 });
    const both = await a.call("direct", { to: b1.sid, user: bob, data: 1 });

    const presence = await b2.call("presence", { room });
    return {
      room,
      bob,
      sids: { a: a.sid, b1: b1.sid, b2: b2.sid },
      custom,
      customEnv,
      customEvents: b1.events.filter((e) => e.event === "chat.line").length,
      bySid,
      bySidEnv,
      byUser,
      byUserEnv1,
      byUserEnv2,
      unknownSid,
      unknownUser,
      both,
      presence,
    };
  },

  /** join with since replays history, in order, before the ack. */
  async history() {
    const room = uniqueRoom("history");
    const a = await connect("alice", { user: "alice" });
    const publishes = [];
    for (let n = 1; n <= 4; n += 1) publishes.push(await a.call("publish", { room, data: { n } }));
    const b = await connect("bob", { user: "bob" });
    const { ack: join, seen } = await b.callCounting("join", { room, since: 1 });
    const beforeAck = b.events.slice(0, seen).map((e) => ({
      event: e.event,
      data: e.args[0]?.data,
      offset: e.args[0]?.offset,
    }));
    const fresh = await b.call("join", { room: `${room}:empty`, since: 0 });
    return { room, publishes, join, beforeAck, fresh };
  },

  /** Error acks; the socket survives them all. */
  async errors() {
    const room = uniqueRoom("errors");
    const a = await connect("alice", { user: "alice" });
    const sidAtStart = a.sid;
    await a.call("join", { room });
    const badRoom = await a.call("join", { room: "bad room!" });
    const big = "x".repeat(64 * 1024 + 1);
    const tooLarge = await a.call("publish", { room, data: big });
    const connectedAfterTooLarge = a.socket.connected;
    const unknown = await a.call("frobnicate", { room });
    const reservedPublish = await a.call("publish", { room, event: "join", data: 1 });
    const reservedDirect = await a.call("direct", { to: a.sid, event: "disconnect", data: 1 });
    const later = await a.call("publish", { room, data: { still: "here" } });
    const laterEnv = await a.message({ still: "here" });
    return {
      badRoom,
      tooLarge,
      connectedAfterTooLarge,
      unknown,
      reservedPublish,
      reservedDirect,
      later,
      laterEnv,
      connected: a.socket.connected,
      sidUnchanged: a.sid === sidAtStart,
    };
  },

  /** A bad auth.user is refused with a connect_error carrying the contract's data. */
  async connect_error() {
    const refusedBadUser = await refused("bad-user", { user: "bad name!" });
    const ok = await connect("good", { user: "good.name" });
    return { refused: refusedBadUser, goodConnected: ok.socket.connected };
  },

  /** A websocket client and a polling client share a room. */
  async mixed() {
    const room = uniqueRoom("mixed");
    const ws = await connect("ws", { user: "ws", transport: "websocket" });
    const poll = await connect("poll", { user: "poll", transport: "polling" });
    await ws.call("join", { room });
    await poll.call("join", { room });
    const fromWs = await ws.call("publish", { room, data: { from: "ws" } });
    const fromPoll = await poll.call("publish", { room, data: { from: "poll" } });
    const pollGot = await poll.message({ from: "ws" });
    const wsGot = await ws.message({ from: "poll" });
    return {
      room,
      sids: { ws: ws.sid, poll: poll.sid },
      transports: { ws: ws.transport, poll: poll.transport },
      fromWs,
      fromPoll,
      pollGot,
      wsGot,
    };
  },

  /** No transports option: the client starts on polling and upgrades to websocket. */
  async upgrade() {
    const room = uniqueRoom("upgrade");
    let upgradedTo = null;
    let transportAtOpen = null;
    const options = { forceNew: true, reconnection: false, timeout: WAIT_MS, auth: { user: "up" } };
    const socket = io(url, options);
    sockets.push(socket);
    const upgraded = new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Expected(`no upgrade within ${WAIT_MS} ms`)),
        WAIT_MS,
      );
      socket.io.on("open", () => {
        transportAtOpen = socket.io.engine.transport.name;
        socket.io.engine.on("upgrade", (transport) => {
          clearTimeout(timer);
          upgradedTo = transport.name;
          resolve();
        });
      });
    });
    const client = new Client(socket);
    client.label = "upgrader";
    await new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", (err) => reject(new Expected(`connect_error: ${err.message}`)));
    });
    await upgraded;
    const other = await connect("other", { user: "other", transport: "websocket" });
    const join = await client.call("join", { room });
    await other.call("join", { room });
    const sent = await client.call("publish", { room, data: { after: "upgrade" } });
    const otherGot = await other.message({ after: "upgrade" });
    const reply = await other.call("publish", { room, data: { reply: true } });
    const clientGot = await client.message({ reply: true });
    return {
      transportAtOpen,
      upgradedTo,
      transportNow: client.transport,
      join,
      sent,
      otherGot,
      reply,
      clientGot,
      sid: client.sid,
    };
  },

  /** A disconnect is a leave for every room the connection was in. */
  async disconnect() {
    const room = uniqueRoom("disconnect");
    const a = await connect("alice", { user: "alice" });
    const b = await connect("bob", { user: "bob" });
    await a.call("join", { room });
    await b.call("join", { room });
    const bSid = b.sid;
    b.socket.disconnect();
    const leave = await a.presence("leave", bSid);
    const presence = await a.call("presence", { room });
    return { room, sids: { a: a.sid, b: bSid }, leave, presence };
  },
};

async function main() {
  if (!url || !transportArg || !scenarioName) {
    fail("usage: node scenario.mjs URL websocket|polling|default SCENARIO");
  }
  await runScenario(SCENARIOS, scenarioName, { fail, sockets, totalMs: TOTAL_MS });
}

main();
