// The page's state as plain data: conversations (rooms and direct chats), their messages in
// order, unread counts, members and who is typing. No DOM and no sockets here.
//
// Rooms: every envelope carries the room's offset; messages are kept sorted by offset and
// deduplicated by it, so a replay after a reconnect (`join` with `since`) merges with what is
// already shown, once each, in order. `lastOffset` counts every event of the room (typing
// included), because that is what `since` has to resume from.
// Offsets are only comparable within one epoch (the `join` ack names the room's): when a
// rejoin finds another epoch, the room started again (a restarted relay, or a room forgotten),
// so its offsets begin a new generation here. What was shown stays, before it; the new
// generation's messages are new even where their offsets repeat old ones.
// Direct chats have no offsets: they are deduplicated by envelope id, in arrival order.

const STORAGE = { nickname: "relay.nickname", rooms: "relay.rooms", active: "relay.active" };

/** The conversation key for a room. */
export const roomKey = (room) => `room:${room}`;

/** The conversation key for a direct chat with `peer` ({sid, user}): by user when named. */
export const directKey = (peer) => (peer.user ? `dm:${peer.user}` : `dm-sid:${peer.sid}`);

/** What a message's `data` reads as: a string, `{text}`, or else its JSON. */
export function textOf(data) {
  if (typeof data === "string") return data;
  if (data && typeof data === "object" && typeof data.text === "string") return data.text;
  return JSON.stringify(data);
}

/**
 * A display name for a sender ({sid, user}), the one `relay listen` prints (cli/render.py
 * `sender_text`): the user; `anon-` and the sid's first 6 characters for a connection without
 * one; `api` for the HTTP API, whose messages have neither.
 */
export function senderName(from) {
  if (!from || typeof from !== "object") return "?";
  if (from.user) return String(from.user);
  if (from.sid) return `anon-${String(from.sid).slice(0, 6)}`;
  return "api";
}

export class Conversation {
  constructor(kind, name, peer = null) {
    this.kind = kind; // "room" | "direct"
    this.name = name; // room name, or the peer's display name
    this.peer = peer; // direct only: {sid, user}
    this.key = kind === "room" ? roomKey(name) : directKey(peer);
    this.messages = [];
    this.seen = new Set();
    this.lastOffset = 0;
    this.epoch = null; // the epoch `lastOffset` counts in (rooms; from the last join ack)
    this.generation = 0; // how many times the room started again while shown
    this.unread = 0;
    this.loaded = false; // first join answered: later messages are news, not history
    this.replaying = false; // a join with `since` is in flight
    this.members = new Map(); // sid -> {sid, user}
    this.typing = new Map(); // sid -> {user, until}
  }

  /**
   * Add a message; answer its index, or -1 when it is already here.
   * `message` is an envelope; our own sends add `cid`, `placeholder` (shown before the ack),
   * `pending`, `failed` (why it was not sent or not delivered), `request` (what to send again
   * to retry it) and `fromAck`.
   */
  add(message) {
    const ids = [`id:${message.id}`];
    // A message the page sent again, not knowing whether the first went out (its connection
    // dropped before the answer), has a new id but the same client id from the same sender.
    const cid = message.data && typeof message.data === "object" ? message.data.cid : undefined;
    if (!message.placeholder && typeof cid === "string" && cid) {
      ids.push(`cid:${message.from?.user ?? message.from?.sid ?? ""}:${cid}`);
    }
    if (this.kind === "room" && Number.isInteger(message.offset)) {
      ids.push(`offset:${this.generation}:${message.offset}`);
      // Our own message known from its ack, not from the room: messages before it may still
      // be on their way, so it must not move the offset a rejoin resumes from.
      if (!message.fromAck) this.noteOffset(message.offset);
    }
    if (ids.some((id) => this.seen.has(id))) return -1;
    for (const id of ids) this.seen.add(id);
    message.generation = this.generation;
    let index = this.messages.length;
    if (this.kind === "room") {
      while (index > 0 && after(this.messages[index - 1], message)) index -= 1;
    }
    this.messages.splice(index, 0, message);
    return index;
  }

  /**
   * The room's epoch, from a join ack. Answers true when it is not the one our offsets count
   * in: the room started again, and a new generation of offsets begins (from 0). Our messages
   * not sent yet move to it, so they stay last.
   */
  noteEpoch(epoch) {
    if (typeof epoch !== "string" || epoch === this.epoch) return false;
    const was = this.epoch;
    this.epoch = epoch;
    if (was === null) return false; // the first we hear of it: nothing counted in another
    this.generation += 1;
    this.lastOffset = 0;
    for (const m of this.messages) if (m.placeholder) m.generation = this.generation;
    return true;
  }

  noteOffset(offset) {
    if (Number.isInteger(offset) && offset > this.lastOffset) this.lastOffset = offset;
  }

  setMembers(members) {
    this.members = new Map(members.map((m) => [m.sid, { sid: m.sid, user: m.user ?? null }]));
  }

  /** Members grouped by user (one entry per person, however many tabs), sorted by name. */
  people() {
    const byKey = new Map();
    for (const m of this.members.values()) {
      const key = m.user ? `u:${m.user}` : `s:${m.sid}`;
      const entry = byKey.get(key) ?? { user: m.user, sids: [] };
      entry.sids.push(m.sid);
      byKey.set(key, entry);
    }
    return [...byKey.values()].sort((a, b) =>
      senderName({ user: a.user, sid: a.sids[0] }).localeCompare(
        senderName({ user: b.user, sid: b.sids[0] }),
      ),
    );
  }

  /** Names of people typing right now; forgets the expired ones. */
  typists(now) {
    const names = new Set();
    for (const [sid, t] of this.typing) {
      if (t.until <= now) this.typing.delete(sid);
      else names.add(t.user);
    }
    return [...names];
  }
}

/** Whether room message `a` goes after `b`: by generation, then by offset. */
function after(a, b) {
  const ga = a.generation ?? 0;
  const gb = b.generation ?? 0;
  return ga !== gb ? ga > gb : a.offset > b.offset;
}

export class Store {
  constructor(storage = window.localStorage) {
    this.storage = storage;
    this.conversations = new Map(); // key -> Conversation, in sidebar order
    this.activeKey = null;
  }

  get active() {
    return this.activeKey ? (this.conversations.get(this.activeKey) ?? null) : null;
  }

  rooms() {
    return [...this.conversations.values()].filter((c) => c.kind === "room");
  }

  directs() {
    return [...this.conversations.values()].filter((c) => c.kind === "direct");
  }

  room(name, create = false) {
    const key = roomKey(name);
    let conv = this.conversations.get(key);
    if (!conv && create) {
      conv = new Conversation("room", name);
      this.conversations.set(key, conv);
      this.save();
    }
    return conv ?? null;
  }

  direct(peer) {
    const key = directKey(peer);
    let conv = this.conversations.get(key);
    if (!conv) {
      conv = new Conversation("direct", senderName(peer), { sid: peer.sid, user: peer.user });
      this.conversations.set(key, conv);
    } else if (peer.sid) {
      conv.peer.sid = peer.sid; // the peer's latest connection
    }
    return conv;
  }

  remove(key) {
    this.conversations.delete(key);
    if (this.activeKey === key) this.activeKey = null;
    this.save();
  }

  activate(key) {
    const conv = this.conversations.get(key);
    if (!conv) return null;
    this.activeKey = key;
    conv.unread = 0;
    this.save();
    return conv;
  }

  totalUnread() {
    let n = 0;
    for (const c of this.conversations.values()) n += c.unread;
    return n;
  }

  // Persistence: the nickname, the joined rooms and the open one survive a reload.
  get nickname() {
    return this.storage.getItem(STORAGE.nickname) ?? "";
  }

  set nickname(value) {
    this.storage.setItem(STORAGE.nickname, value);
  }

  save() {
    const rooms = this.rooms().map((c) => c.name);
    this.storage.setItem(STORAGE.rooms, JSON.stringify(rooms));
    const active = this.active;
    if (active?.kind === "room") this.storage.setItem(STORAGE.active, active.name);
  }

  savedRooms() {
    try {
      const rooms = JSON.parse(this.storage.getItem(STORAGE.rooms) ?? "[]");
      return Array.isArray(rooms) ? rooms.filter((r) => typeof r === "string") : [];
    } catch {
      return [];
    }
  }

  savedActive() {
    return this.storage.getItem(STORAGE.active);
  }
}
