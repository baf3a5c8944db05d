// Connection state recovery ACROSS cluster nodes with Node's official socket.io-client.
//
//   node cluster_recovery.mjs URL_A URL_B TRANSPORT SCENARIO [PID_A]
//
// Alice is connected to node A, Bob to node B, both in one room. Alice's connection goes (her
// transport dies, or A is stopped with SIGTERM or SIGKILL: the script signals PID_A itself, or
// prints a cue line and waits for the test's answer on stdin while the test does);
// her client's manager is pointed at B before, so that its reconnect lands there (as a load
// balancer would send it). The script prints one JSON line of what the clients saw and exits
// 0; pytest asserts on it (tests/cluster/test_recovery.py). Every wait has a deadline.

import { Expected, RecordingClient, runScenario } from "./harness.mjs";

const WAIT_MS = 10000;
const TOTAL_MS = 40000;

const [urlA, urlB, transport, scenarioName, pidA] = process.argv.slice(2);
const sockets = [];
const clients = [];
const RUN = Math.random().toString(36).slice(2, 10);

function fail(message) {
  process.stderr.write(`cluster recovery ${scenarioName} (${transport}) failed: ${message}\n`);
  for (const c of clients) process.stderr.write(`${c.label} saw: ${JSON.stringify(c.log)}\n`);
  for (const s of sockets) s.disconnect();
  process.exit(1);
}

/** A recording client of this script's transport (harness.mjs), on the node at `url`. */
class Client extends RecordingClient {
  constructor(label, url, user, { reconnection = false } = {}) {
    const delayMax = 200;
    super({ label, url, user, transport, waitMs: WAIT_MS, clients, sockets, reconnection, delayMax });
  }

  /** Point the manager's next (re)connection at `url`. */
  moveTo(url) {
    this.socket.io.uri = url;
  }
}

/** Alice on A and Bob on B, both in one room (Alice in a second one, alone). */
async function pair(options) {
  const room = `xrec:${transport}:${RUN}`;
  const alone = `${room}:alone`;
  const alice = new Client("alice", urlA, `alice-${RUN}`, options);
  const bob = new Client("bob", urlB, `bob-${RUN}`);
  const first = await alice.connected();
  await bob.connected();
  const joined = await alice.call("join", { room });
  await alice.call("join", { room: alone });
  await bob.call("join", { room });
  await alice.presence("join", bob.socket.id); // (before anything drops: seen live)
  return { room, alone, alice, bob, first, joined };
}

/** Print `{"cue": name}` and wait for the test to answer with a line on stdin. */
function cue(name) {
  process.stdout.write(`${JSON.stringify({ cue: name })}\n`);
  return new Promise((resolve) => {
    process.stdin.once("data", () => {
      process.stdin.pause();
      resolve();
    });
  });
}

const ok = (ack, what) => {
  if (!ack.ok) throw new Expected(`${what}: ${JSON.stringify(ack)}`);
  return ack;
};

/** Bob's traffic while Alice is away: room messages and directs, interleaved. */
async function meanwhile(bob, room, alone, sid, user) {
  const acks = [];
  acks.push(ok(await bob.call("publish", { room, data: { n: 1 } }), "publish 1"));
  acks.push(ok(await bob.call("direct", { to: sid, event: "dm", data: { n: 2 } }), "direct 2"));
  acks.push(ok(await bob.call("publish", { room, event: "chat", data: { n: 3 } }), "publish 3"));
  acks.push(ok(await bob.call("direct", { user, data: { n: 4 } }), "direct 4"));
  acks.push(ok(await bob.call("publish", { room: alone, data: { n: 5 } }), "publish 5"));
  return acks;
}

const SCENARIOS = {
  /** Alice's transport dies on A (A lives on and holds her session); she reconnects to B. */
  async handover() {
    const { room, alone, alice, bob, first } = await pair();
    const sid = alice.socket.id;
    const mark = alice.log.length;
    const bobMark = bob.log.length;
    alice.socket.io.engine.close(); // the transport dies under the socket
    const dropped = await alice.disconnected(mark);
    await bob.presence("leave", sid, bobMark);
    const acks = await meanwhile(bob, room, alone, sid, `alice-${RUN}`);
    const back = alice.log.length;
    const rejoinMark = bob.log.length;
    alice.moveTo(urlB);
    alice.socket.connect();
    const again = await alice.connected(back);
    await alice.gotAll(5, back);
    const rejoined = await bob.presence("join", sid, rejoinMark);
    // in both rooms again, on B: live messages come after the missed ones, once
    const live = ok(await bob.call("publish", { room, data: { n: 6 } }), "publish 6");
    const live2 = ok(await bob.call("publish", { room: alone, data: { n: 7 } }), "publish 7");
    await alice.gotAll(7, back);
    const presence = await alice.call("presence", { room });
    const directAfter = ok(await bob.call("direct", { to: sid, data: { n: 8 } }), "direct 8");
    await alice.gotAll(8, back);
    return {
      room,
      sid,
      first,
      dropped,
      acks,
      again,
      rejoined: rejoined.args[0],
      live,
      live2,
      directAfter,
      received: alice.received(back),
      connectIndex: alice.log.slice(back).findIndex((e) => e.lifecycle === "connect"),
      firstMessageIndex: alice.log.slice(back).findIndex((e) => e.event && e.event !== "presence"),
      presence,
    };
  },

  /** A is stopped with SIGTERM under traffic; Alice's own reconnection lands on B. */
  async sigterm() {
    const { room, alice, bob, first } = await pair({ reconnection: true });
    const sid = alice.socket.id;
    const mark = alice.log.length;
    const sent = [];
    const publish = async (n) => {
      const ack = ok(await bob.call("publish", { room, data: { n } }), `publish ${n}`);
      sent.push(ack.offset);
    };
    for (let n = 1; n <= 5; n++) await publish(n);
    alice.moveTo(urlB);
    await cue("stop A"); // the test sends A its SIGTERM and answers at once
    const dropped = await alice.disconnected(mark);
    // traffic while Alice moves: published at once, racing her reconnect
    const racing = [];
    for (let n = 6; n <= 15; n++) racing.push(publish(n));
    racing.push(bob.call("direct", { to: sid, event: "dm", data: { n: 100 } }));
    await Promise.all(racing);
    const again = await alice.connected(mark + 1);
    for (let n = 16; n <= 20; n++) await publish(n);
    await alice.waitFor("20 room messages", () =>
      alice.received(mark).filter((e) => e.event === "message").length >= 20,
    mark);
    await alice.waitFor("the direct", () => alice.received(mark).some((e) => e.event === "dm"), mark);
    return { sid, first, dropped, again, sent, received: alice.received(mark) };
  },

  /** Alice drops; then A is stopped (SIGTERM saves her session in Redis) and is gone; traffic
   *  meanwhile only Redis holds (the room's stream, directs appended to the saved session). */
  async saved() {
    const { room, alice, bob, first } = await pair();
    const sid = alice.socket.id;
    const mark = alice.log.length;
    const bobMark = bob.log.length;
    alice.socket.io.engine.close();
    const dropped = await alice.disconnected(mark);
    await bob.presence("leave", sid, bobMark);
    // the test stops A and waits for it to exit, then says go: only Redis holds her session
    await cue("dropped");
    const acks = [];
    acks.push(ok(await bob.call("direct", { to: sid, event: "dm", data: { n: 1 } }), "direct 1"));
    acks.push(ok(await bob.call("direct", { user: `alice-${RUN}`, data: { n: 2 } }), "direct 2"));
    // someone comes and goes meanwhile: presence she must hear of too
    const carol = new Client("carol", urlB, `carol-${RUN}`);
    await carol.connected();
    ok(await carol.call("join", { room }), "carol joins");
    ok(await carol.call("leave", { room }), "carol leaves");
    const carolSid = carol.socket.id;
    for (let n = 3; n <= 5; n++) {
      acks.push(ok(await bob.call("publish", { room, data: { n } }), `publish ${n}`));
    }
    const back = alice.log.length;
    alice.moveTo(urlB);
    alice.socket.connect();
    const again = await alice.connected(back);
    await alice.gotAll(5, back);
    ok(await bob.call("publish", { room, data: { n: 6 } }), "publish 6");
    await alice.gotAll(6, back);
    const presence = alice.log
      .slice(back)
      .filter((e) => e.event === "presence")
      .map((e) => [e.args[0].action, e.args[0].member.sid === carolSid ? "carol" : e.args[0].member.sid]);
    return { sid, first, dropped, acks, again, presence, received: alice.received(back) };
  },

  /** A is killed (SIGKILL: nothing saved); Alice recovers with join + since + epoch on B. */
  async sigkill() {
    const { room, alice, bob, first, joined } = await pair({ reconnection: true });
    const sid = alice.socket.id;
    const mark = alice.log.length;
    for (let n = 1; n <= 3; n++) ok(await bob.call("publish", { room, data: { n } }), "publish");
    await alice.gotAll(3, mark);
    const seen = alice.received(mark);
    const last = seen[seen.length - 1].offset;
    alice.moveTo(urlB);
    process.kill(Number(pidA), "SIGKILL");
    const dropped = await alice.disconnected(mark);
    const back = alice.log.indexOf(dropped) + 1; // (her reconnect may race what follows)
    for (let n = 4; n <= 8; n++) ok(await bob.call("publish", { room, data: { n } }), "publish");
    const again = await alice.connected(back);
    const rejoin = ok(
      await alice.call("join", { room, since: last, epoch: joined.epoch }),
      "join with since",
    );
    ok(await bob.call("publish", { room, data: { n: 9 } }), "publish 9");
    await alice.gotAll(6, back);
    return {
      sid,
      first,
      joined,
      dropped,
      again,
      last,
      rejoin,
      before: seen,
      received: alice.received(back),
    };
  },
};

async function main() {
  if (transport !== "websocket" && transport !== "polling") fail("transport: websocket|polling");
  await runScenario(SCENARIOS, scenarioName, { fail, sockets, totalMs: TOTAL_MS });
}

main();
