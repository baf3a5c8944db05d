// Connection state recovery with Node's official socket.io-client (`socket.recovered`).
//
//   node recovery.mjs URL TRANSPORT SCENARIO        (TRANSPORT: websocket or polling)
//
// Alice's connection drops (her client closes its Engine.IO transport, as a network failure
// would: no Socket.IO goodbye); while she is away Bob publishes to their room and sends her
// direct messages; she reconnects. The script prints one JSON line of what the clients saw and
// exits 0; pytest asserts on it (tests/e2e/test_js_recovery.py). Every wait has a deadline: a
// missed one exits 1 with a message on stderr.

import { RecordingClient, runScenario } from "./harness.mjs";

const WAIT_MS = 8000;
const TOTAL_MS = 25000;

const [url, transport, scenarioName] = process.argv.slice(2);
const sockets = [];
const clients = [];
const RUN = Math.random().toString(36).slice(2, 10);

function fail(message) {
  process.stderr.write(`recovery ${scenarioName} (${transport}) failed: ${message}\n`);
  for (const c of clients) process.stderr.write(`${c.label} saw: ${JSON.stringify(c.log)}\n`);
  for (const s of sockets) s.disconnect();
  process.exit(1);
}

/** A recording client of this script's URL and transport (harness.mjs). */
class Client extends RecordingClient {
  constructor(label, user, { reconnection = false } = {}) {
    super({ label, url, user, transport, waitMs: WAIT_MS, clients, sockets, reconnection });
  }
}

/** Alice and Bob connected and in one room. */
async function pair(options) {
  const room = `rec:${transport}:${RUN}`;
  const alice = new Client("alice", `alice-${RUN}`, options);
  const bob = new Client("bob", `bob-${RUN}`);
  const first = await alice.connected();
  await bob.connected();
  await alice.call("join", { room });
  await bob.call("join", { room });
  return { room, alice, bob, first };
}

/** Bob's traffic while Alice is away: room messages and directs, interleaved. */
async function meanwhile(bob, room, sid, user) {
  const acks = [];
  acks.push(await bob.call("publish", { room, data: { n: 1 } }));
  acks.push(await bob.call("direct", { to: sid, event: "dm", data: { n: 2 } }));
  acks.push(await bob.call("publish", { room, event: "chat", data: { n: 3 } }));
  acks.push(await bob.call("direct", { user, data: { n: 4 } }));
  acks.push(await bob.call("publish", { room, data: { n: 5 } }));
  return acks;
}

const SCENARIOS = {
  /** Drop, traffic while away (seen to be away: Bob hears the leave), manual reconnect. */
  async manual() {
    const { room, alice, bob, first } = await pair();
    const sid = alice.socket.id;
    const mark = alice.log.length;
    alice.socket.io.engine.close(); // the transport dies under the socket
    const dropped = await alice.disconnected(mark);
    await bob.presence("leave", sid);
    const acks = await meanwhile(bob, room, sid, `alice-${RUN}`);
    const bobMark = bob.log.length;
    const back = alice.log.length;
    alice.socket.connect();
    const again = await alice.connected(back);
    await alice.gotAll(5, back);
    const rejoined = await bob.presence("join", sid, bobMark);
    // still in the room: a live message arrives after the missed ones
    const live = await bob.call("publish", { room, data: { n: 6 } });
    await alice.gotAll(6, back);
    const presence = await alice.call("presence", { room });
    // an explicit goodbye is not recoverable: a new sid, recovered false
    const gone = alice.log.length;
    alice.socket.disconnect();
    alice.socket.connect();
    const fresh = await alice.connected(gone);
    const freshPresence = await bob.call("presence", { room });
    return {
      room,
      sid,
      first,
      dropped,
      acks,
      again,
      rejoined: rejoined.args[0],
      live,
      received: alice.received(back),
      connectIndex: alice.log.slice(back).findIndex((e) => e.lifecycle === "connect"),
      firstMessageIndex: alice.log.slice(back).findIndex((e) => e.event && e.event !== "presence"),
      presence,
      fresh,
      freshPresence,
    };
  },

  /** The client's own reconnection loop: traffic races the reconnect; still all, once, in order. */
  async auto() {
    const { room, alice, bob } = await pair({ reconnection: true });
    const sid = alice.socket.id;
    const mark = alice.log.length;
    alice.socket.io.engine.close();
    const dropped = await alice.disconnected(mark);
    await bob.presence("leave", sid);
    const acks = await meanwhile(bob, room, sid, `alice-${RUN}`);
    const again = await alice.connected(mark);
    await alice.gotAll(5, mark);
    const live = await bob.call("publish", { room, data: { n: 6 } });
    await alice.gotAll(6, mark);
    return { sid, dropped, acks, again, live, received: alice.received(mark) };
  },
};

async function main() {
  if (transport !== "websocket" && transport !== "polling") fail("transport: websocket|polling");
  await runScenario(SCENARIOS, scenarioName, { fail, sockets, totalMs: TOTAL_MS });
}

main();
