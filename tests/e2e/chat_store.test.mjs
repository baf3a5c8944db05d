// The chat page's pure state (relay/static/js/store.js), run by `node --test`.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  tokenClaims,
  tokenFromInput,
  tokenProblem,
} from "../../relay/static/js/credentials.js";
import { MAX_WAITS, Outbox } from "../../relay/static/js/outbox.js";
import { Conversation, Store, senderName, textOf } from "../../relay/static/js/store.js";

const env = (offset, extra = {}) => ({
  id: `id-${offset}`,
  room: "r",
  event: "message",
  from: { sid: "s1", user: "ann" },
  data: `m${offset}`,
  offset,
  ts: 1000 + offset,
  ...extra,
});

test("room messages are kept in offset order, each once", () => {
  const c = new Conversation("room", "r");
  for (const o of [1, 3, 2, 5]) assert.notEqual(c.add(env(o)), -1);
  assert.equal(c.add(env(3)), -1, "same offset again (a replay)");
  assert.equal(c.add(env(4, { id: "id-2" })), -1, "same id again");
  assert.equal(c.add(env(4)), 3, "a gap filled later lands in place");
  assert.deepEqual(c.messages.map((m) => m.offset), [1, 2, 3, 4, 5]);
  assert.equal(c.lastOffset, 5);
});

test("typing notices advance the offset to resume from, without being messages", () => {
  const c = new Conversation("room", "r");
  c.add(env(1));
  c.noteOffset(7);
  c.noteOffset(3);
  assert.equal(c.lastOffset, 7);
  assert.equal(c.messages.length, 1);
});

test("a pending message stays last until it has an offset", () => {
  const c = new Conversation("room", "r");
  c.add(env(1));
  c.add({ id: "local:x", offset: Number.POSITIVE_INFINITY, pending: true, data: "p" });
  assert.equal(c.add(env(2)), 1);
  assert.equal(c.messages.at(-1).id, "local:x");
});

test("direct messages dedupe by id, in arrival order", () => {
  const c = new Conversation("direct", "bob", { sid: "s2", user: "bob" });
  assert.equal(c.add({ id: "b", offset: null, data: 1 }), 0);
  assert.equal(c.add({ id: "a", offset: null, data: 2 }), 1);
  assert.equal(c.add({ id: "b", offset: null, data: 1 }), -1);
});

test("members are grouped per person, sorted by name", () => {
  const c = new Conversation("room", "r");
  c.setMembers([
    { sid: "1", user: "zed" },
    { sid: "2", user: "amy" },
    { sid: "3", user: "zed" },
    { sid: "4abc", user: null },
  ]);
  assert.deepEqual(
    c.people().map((p) => [p.user, p.sids.length]),
    [
      ["amy", 1],
      [null, 1],
      ["zed", 2],
    ],
  );
});

test("typing expires", () => {
  const c = new Conversation("room", "r");
  c.typing.set("1", { user: "amy", until: 100 });
  c.typing.set("2", { user: "bo", until: 300 });
  assert.deepEqual(c.typists(200), ["bo"]);
  assert.equal(c.typing.size, 1);
});

test("data reads as text; senders have names", () => {
  assert.equal(textOf("plain"), "plain");
  assert.equal(textOf({ text: "<b>hi</b>" }), "<b>hi</b>");
  assert.equal(textOf({ n: 1 }), '{"n":1}');
  assert.equal(textOf(42), "42");
  // As `relay listen` prints them (cli/render.py sender_text; test_chat_page checks the pair).
  assert.equal(senderName({ sid: "4MNVPkHvRtfOf6QoAAAB", user: null }), "anon-4MNVPk");
  assert.equal(senderName({ sid: null, user: null }), "api");
  assert.equal(senderName({ sid: "s", user: "ann" }), "ann");
});

test("a message sent again (same sender, same client id, new id) shows once", () => {
  const c = new Conversation("room", "r");
  const first = env(1, { data: { text: "hi", cid: "c1" } });
  assert.equal(c.add(first), 0);
  assert.equal(c.add(env(2, { data: { text: "hi", cid: "c1" } })), -1);
  // ...but another sender's message with that client id is theirs, and a placeholder does not
  // count (the real message replaces it).
  assert.equal(c.add(env(3, { data: { text: "hi", cid: "c1" }, from: { sid: "s9", user: "bo" } })), 1);
  const d = new Conversation("room", "q");
  d.add({ id: "local:c2", cid: "c2", placeholder: true, offset: Infinity, data: { cid: "c2" } });
  assert.notEqual(d.add(env(1, { data: { text: "x", cid: "c2" } })), -1);
});

test("the store remembers rooms and the open one", () => {
  const memory = new Map();
  const storage = { getItem: (k) => memory.get(k) ?? null, setItem: (k, v) => memory.set(k, v) };
  const s = new Store(storage);
  s.nickname = "ann";
  s.room("a", true);
  s.room("b", true);
  s.activate("room:b");
  const again = new Store(storage);
  assert.equal(again.nickname, "ann");
  assert.deepEqual(again.savedRooms(), ["a", "b"]);
  assert.equal(again.savedActive(), "b");
});

// ---- the outbox: one at a time, in order, waiting out rate limits -----------------------------

/** A server that answers each request with the next scripted ack (or throws it). */
function scripted(acks) {
  const sent = [];
  const send = async (item) => {
    sent.push(item.cid);
    const ack = acks.shift() ?? { ok: true, id: item.cid };
    if (ack instanceof Error) throw ack;
    return ack;
  };
  return { sent, send };
}

function outboxWith(acks) {
  const server = scripted(acks);
  const done = [];
  const failed = [];
  const slept = [];
  const box = new Outbox({
    send: server.send,
    sent: (item) => done.push(item.cid),
    failed: (item, error) => failed.push([item.cid, error.code]),
    sleep: async (ms) => {
      slept.push(ms);
    },
  });
  return { box, server, done, failed, slept };
}

const limited = (ms) => ({ ok: false, error: { code: "rate_limited", message: "slow", retry_after_ms: ms } });

test("the outbox sends nothing until opened, then everything in order", async () => {
  const { box, server, done } = outboxWith([]);
  box.enqueue({ cid: "a" });
  box.enqueue({ cid: "b" });
  await box.idle();
  assert.deepEqual(server.sent, []);
  box.open();
  box.enqueue({ cid: "c" });
  await box.idle();
  assert.deepEqual(done, ["a", "b", "c"]);
});

test("rate_limited waits its retry_after_ms and sends the same message again, first", async () => {
  const { box, server, done, failed, slept } = outboxWith([{ ok: true }, limited(1500), limited(10)]);
  box.open();
  for (const cid of ["a", "b", "c"]) box.enqueue({ cid });
  await box.idle();
  assert.deepEqual(server.sent, ["a", "b", "b", "b", "c"]);
  assert.deepEqual(done, ["a", "b", "c"]);
  assert.deepEqual(failed, []);
  assert.deepEqual(slept, [1500, 20], "waits as told, never below the floor");
});

test("other errors fail that message only; rate_limited without a delay fails too", async () => {
  const tooLarge = { ok: false, error: { code: "too_large", message: "big" } };
  const noDelay = { ok: false, error: { code: "rate_limited", message: "rooms" } };
  const { box, done, failed } = outboxWith([tooLarge, noDelay]);
  box.open();
  for (const cid of ["a", "b", "c"]) box.enqueue({ cid });
  await box.idle();
  assert.deepEqual(failed, [["a", "too_large"], ["b", "rate_limited"]]);
  assert.deepEqual(done, ["c"]);
});

test("a message rate limited too many times in a row fails, so it can be retried", async () => {
  const acks = Array.from({ length: MAX_WAITS + 1 }, () => limited(5));
  const { box, failed, slept } = outboxWith(acks);
  box.open();
  box.enqueue({ cid: "a" });
  await box.idle();
  assert.deepEqual(failed, [["a", "rate_limited"]]);
  assert.equal(slept.length, MAX_WAITS);
});

test("a lost connection keeps the message first in line; a replay can settle it", async () => {
  const { box, server, done } = outboxWith([new Error("socket has been disconnected")]);
  box.open();
  box.enqueue({ cid: "a" });
  box.enqueue({ cid: "b" });
  await box.idle();
  assert.deepEqual(server.sent, ["a"]);
  assert.equal(box.isOpen, false, "closed until the page reconnects and rejoins");
  box.open();
  await box.idle();
  assert.deepEqual(server.sent, ["a", "a", "b"], "sent again, still before b");
  assert.deepEqual(done, ["a", "b"]);

  const again = outboxWith([new Error("gone")]);
  again.box.open();
  again.box.enqueue({ cid: "x" });
  again.box.enqueue({ cid: "y" });
  await again.box.idle();
  assert.equal(again.box.remove("x"), true, "the rejoin's replay showed it arrived");
  again.box.open();
  await again.box.idle();
  assert.deepEqual(again.server.sent, ["x", "y"]);
});

test("clear hands back what was queued, in order, and sends none of it", async () => {
  const { box, server } = outboxWith([]);
  box.enqueue({ cid: "a" });
  box.enqueue({ cid: "b" });
  assert.deepEqual(box.clear().map((i) => i.cid), ["a", "b"]);
  box.open();
  await box.idle();
  assert.deepEqual(server.sent, []);
});

test("closing stops the queue between messages", async () => {
  let release;
  const gate = new Promise((r) => (release = r));
  const sent = [];
  const box = new Outbox({
    send: async (item) => {
      sent.push(item.cid);
      await gate;
      return { ok: true };
    },
    sent: () => {},
    failed: () => {},
  });
  box.open();
  box.enqueue({ cid: "a" });
  box.enqueue({ cid: "b" });
  box.close();
  release();
  await box.idle();
  assert.deepEqual(sent, ["a"]);
  assert.equal(box.has("b"), true);
});

// ---- tokens as the page reads them --------------------------------------------------------------

const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
const jwt = (claims) => `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}.c2lnbmF0dXJl`;

test("a token's claims are read (not trusted) to show its user and expiry", () => {
  const token = jwt({ sub: "zoë", exp: 2000000000, rooms: ["team-*"] });
  assert.deepEqual(tokenClaims(token), { sub: "zoë", exp: 2000000000, rooms: ["team-*"] });
  assert.equal(tokenProblem(token), "");
  assert.equal(tokenClaims("not a token"), null);
  assert.equal(tokenClaims("a.b"), null);
  assert.match(tokenProblem("abc"), /three parts/);
  assert.match(tokenProblem(""), /paste/i);
  assert.match(tokenProblem(jwt({ exp: 1 })), /no user/);
  // An expired token is the server's call (the browser's clock may be off).
  assert.equal(tokenProblem(jwt({ sub: "a", exp: 1 })), "");
});

test("a pasted link with #token= gives its token", () => {
  const token = jwt({ sub: "a" });
  assert.equal(tokenFromInput(`  ${token}\n`), token);
  assert.equal(tokenFromInput(`https://chat.example/#token=${token}`), token);
  assert.equal(tokenFromInput(`https://chat.example/#room=x&token=${token}`), token);
});

test("another epoch starts a new generation: repeated offsets are new messages, after the old", () => {
  const c = new Conversation("room", "r");
  assert.equal(c.noteEpoch("E1"), false, "the first epoch heard of is not a restart");
  for (const o of [1, 2]) c.add(env(o, { id: `old-${o}` }));
  const mine = {
    id: "local:c1",
    room: "r",
    from: { sid: "s1" },
    data: "x",
    offset: Infinity,
    placeholder: true,
  };
  c.add(mine);
  assert.equal(c.noteEpoch("E1"), false, "the same epoch again changes nothing");
  assert.equal(c.lastOffset, 2);
  assert.equal(c.noteEpoch("E2"), true, "another epoch: the room started again");
  assert.equal(c.lastOffset, 0, "since counts in the new epoch from 0");
  for (const o of [1, 2, 3]) assert.notEqual(c.add(env(o, { id: `new-${o}` })), -1, `new ${o}`);
  assert.equal(c.add(env(2, { id: "new-2-again" })), -1, "a replay within the new epoch is a duplicate");
  assert.deepEqual(
    c.messages.map((m) => m.id),
    ["old-1", "old-2", "new-1", "new-2", "new-3", "local:c1"],
    "old ones first, ours not sent yet still last",
  );
  assert.equal(c.lastOffset, 3);
  assert.equal(c.epoch, "E2");
});
