// The chat page's pure state (relay/static/js/store.js), run by `node --test`.
import assert from "node:assert/strict";
import { test } from "node:test";

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
  assert.equal(senderName({ sid: "abcdef", user: null }), "guest-abcd");
  assert.equal(senderName({ sid: null, user: null }), "relay");
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
