// The chat page: wires the store (state), the connection (socket) and the view (DOM).

import { Connection } from "./connection.js";
import { forgetToken } from "./credentials.js";
import { roomNameProblem, userNameProblem } from "./names.js";
import { Store, senderName } from "./store.js";
import * as view from "./view.js";

const $ = (id) => document.getElementById(id);
const TYPING_SEND_EVERY_MS = 2000;
const TYPING_SHOWN_MS = 4000;
const DEFAULT_ROOM = "lobby";

const store = new Store();
const ownSids = new Set(); // every sid this page has had, so our older messages stay "ours"
let lastTypingSent = 0;

const conn = new Connection({
  status: onStatus,
  connected: onConnected,
  refused: onRefused,
  event: onServerEvent,
});

const isOwn = (msg) =>
  Boolean(msg.placeholder || msg.fromAck) ||
  (msg.from?.sid && ownSids.has(msg.from.sid)) ||
  (msg.from?.user != null && msg.from.user === conn.nickname);

// ---- rendering shortcuts -------------------------------------------------------------------

function renderSidebar() {
  view.renderConversations(store, { open: openConversation, close: closeConversation });
}

function renderMembers() {
  view.renderMembers(store.active, conn.id, conn.nickname, openDirect);
}

function renderTyping() {
  const conv = store.active;
  view.renderTyping(conv?.kind === "room" ? conv.typists(Date.now()) : []);
}

function renderActive() {
  const conv = store.active;
  view.renderHeader(conv);
  view.renderMessages(conv, isOwn);
  renderMembers();
  renderTyping();
  renderSidebar();
}

// ---- connection ----------------------------------------------------------------------------

const STATUS_HINTS = {
  connected: (name) => `Connected as ${name}.`,
  reconnecting: (name) => `Connecting as ${name}…`,
  offline: (name) => `Offline; you will be back as ${name}.`,
};

function onStatus(state) {
  view.renderStatus(state, conn.nickname === null);
  document.body.dataset.connection = state; // dims what may be stale (members) when not live
  if (conn.nickname) setNicknameHint(STATUS_HINTS[state](conn.nickname), false);
  if (state === "connected") view.showBanner("");
  else if (state === "offline" && !navigator.onLine) {
    view.showBanner("You are offline. Messages you send go out when you are back.", "info");
  }
}

async function onConnected(socket) {
  ownSids.add(socket.id);
  renderMembers();
  // A fresh connection is in no room: (re)join each, resuming after the last offset seen.
  await Promise.all(store.rooms().map((conv) => joinRoom(conv)));
}

function onRefused({ code, message }) {
  if (code === "unauthorized") {
    forgetToken();
    view.showBanner(`The server refused the token (${message}). Join again to use your nickname.`);
  } else if (code === "bad_request") {
    setNicknameHint(message, true);
    $("nickname").focus();
  } else {
    view.showBanner(`Could not connect: ${message}`);
  }
}

async function joinRoom(conv) {
  conv.replaying = true;
  let ack;
  try {
    ack = await conn.request("join", { room: conv.name, since: conv.lastOffset });
  } catch {
    conv.replaying = false;
    return; // the connection dropped meanwhile; the next "connect" rejoins
  } finally {
    conv.replaying = false;
  }
  if (!ack.ok) {
    view.showBanner(`Could not join ${conv.name}: ${ack.error.message}`);
    if (!conv.loaded) closeConversation(conv.key, false);
    return;
  }
  if (ack.offset < conv.lastOffset) {
    // The room restarted from offset 1 (a restarted server): start the room over.
    conv.messages = [];
    conv.seen.clear();
    conv.lastOffset = 0;
    if (conv === store.active) view.renderMessages(conv, isOwn);
    return joinRoom(conv);
  }
  conv.loaded = true;
  try {
    const presence = await conn.request("presence", { room: conv.name });
    if (presence.ok) conv.setMembers(presence.members);
  } catch {
    return;
  }
  if (conv === store.active) renderMembers();
}

// ---- server events -------------------------------------------------------------------------

function isEnvelope(payload) {
  return payload !== null && typeof payload === "object" && "from" in payload && "data" in payload;
}

function onServerEvent(name, payload) {
  if (name === "presence") onPresence(payload);
  else if (!isEnvelope(payload)) return;
  else if (name === "typing") onTyping(payload);
  else onMessage(payload);
}

function onPresence({ room, action, member }) {
  const conv = store.room(room);
  if (!conv || !member) return;
  if (action === "join") conv.members.set(member.sid, { sid: member.sid, user: member.user ?? null });
  else if (action === "leave") {
    conv.members.delete(member.sid);
    conv.typing.delete(member.sid);
  }
  if (conv === store.active) {
    renderMembers();
    renderTyping();
  }
}

function onTyping(env) {
  const conv = store.room(env.room);
  if (!conv) return;
  conv.noteOffset(env.offset);
  // Typing notices replayed from history are old news.
  if (conv.replaying || !conv.loaded || ownSids.has(env.from?.sid)) return;
  conv.typing.set(env.from.sid, { user: senderName(env.from), until: Date.now() + TYPING_SHOWN_MS });
  if (conv === store.active) {
    renderTyping();
    renderMembers();
  }
}

function onMessage(env) {
  let conv;
  if (env.room == null) {
    conv = store.direct(ownSids.has(env.from?.sid) ? { sid: null, user: conn.nickname } : env.from);
    conv.loaded = true;
  } else {
    conv = store.room(env.room);
    if (!conv) return; // a room we left; late delivery
  }
  const cid = env.data && typeof env.data === "object" ? env.data.cid : undefined;
  if (cid) settlePending(conv, cid);
  const index = conv.add(env);
  if (index < 0) return;
  const wasTyping = conv.typing.delete(env.from?.sid);
  const active = conv === store.active;
  if (active) {
    view.insertMessage(conv, index, isOwn);
    if (wasTyping) {
      renderTyping();
      renderMembers();
    }
  }
  if ((!active || document.hidden) && conv.loaded && !isOwn(env)) conv.unread += 1;
  renderSidebar();
}

/** Drop the placeholder of our message `cid` ("sending…" or failed): the real one is known. */
function settlePending(conv, cid) {
  const index = conv.messages.findIndex((m) => m.placeholder && m.cid === cid);
  if (index < 0) return;
  conv.messages.splice(index, 1);
  if (conv === store.active) $("messages").children[index]?.remove();
}

// ---- sending -------------------------------------------------------------------------------

function sendMessage() {
  const input = $("message-input");
  const text = input.value.trim();
  const conv = store.active;
  if (!text || !conv) return;
  const cid = crypto.randomUUID();
  const data = { text, cid };
  const pending = {
    id: `local:${cid}`,
    cid,
    room: conv.kind === "room" ? conv.name : null,
    event: "message",
    from: { sid: conn.id, user: conn.nickname },
    data,
    offset: conv.kind === "room" ? Number.POSITIVE_INFINITY : null,
    ts: Date.now(),
    placeholder: true,
    pending: true,
  };
  const index = conv.add(pending);
  view.insertMessage(conv, index, isOwn);
  input.value = "";
  autosize(input);
  lastTypingSent = 0;

  const request =
    conv.kind === "room"
      ? conn.send("publish", { room: conv.name, data })
      : conn.send("direct", {
          ...(conv.peer.user ? { user: conv.peer.user } : { to: conv.peer.sid }),
          data,
        });
  request.then(
    (ack) => {
      if (!ack.ok) return fail(conv, cid, `Not sent: ${ack.error.message}`);
      const sent = {
        ...pending,
        id: ack.id,
        offset: ack.offset ?? null,
        placeholder: false,
        pending: false,
        fromAck: true,
      };
      sent.from = { sid: conn.id ?? pending.from.sid, user: conn.nickname };
      if (conv.kind === "direct" && ack.delivered === 0) {
        sent.failed = `Not delivered: ${conv.name} is not connected.`;
      }
      settlePending(conv, cid);
      const at = conv.add(sent);
      if (at >= 0 && conv === store.active) view.insertMessage(conv, at, isOwn);
    },
    () => fail(conv, cid, "Not sent: the connection dropped. Send it again."),
  );
}

function fail(conv, cid, reason) {
  const index = conv.messages.findIndex((m) => m.placeholder && m.cid === cid);
  if (index < 0) return;
  conv.messages[index] = { ...conv.messages[index], pending: false, failed: reason };
  if (conv === store.active) view.replaceMessage(conv, index, isOwn);
}

function sendTyping() {
  const conv = store.active;
  if (conv?.kind !== "room" || !$("message-input").value.trim()) return;
  const now = Date.now();
  if (now - lastTypingSent < TYPING_SEND_EVERY_MS) return;
  lastTypingSent = now;
  conn.volatile("publish", {
    room: conv.name,
    event: "typing",
    data: { typing: true },
    exclude_self: true,
  });
}

// ---- conversations -------------------------------------------------------------------------

function openConversation(key) {
  const conv = store.activate(key);
  if (!conv) return;
  closePanels();
  renderActive();
  $("message-input").focus();
}

function closeConversation(key, tellServer = true) {
  const conv = store.conversations.get(key);
  if (!conv) return;
  if (conv.kind === "room" && tellServer && conn.id) {
    conn.request("leave", { room: conv.name }).catch(() => {});
  }
  const wasActive = store.activeKey === key;
  store.remove(key);
  if (wasActive) {
    const next = store.rooms()[0] ?? store.directs()[0];
    if (next) store.activate(next.key);
  }
  renderActive();
}

function openDirect(peer) {
  if (!peer.user && !peer.sid) return;
  const conv = store.direct(peer);
  conv.loaded = true;
  openConversation(conv.key);
}

/** Validate the nickname field; answer the name, or null after showing why not. */
function checkedNickname() {
  const input = $("nickname");
  const nickname = input.value.trim();
  const problem = userNameProblem(nickname);
  input.setAttribute("aria-invalid", problem ? "true" : "false");
  if (problem) {
    setNicknameHint(problem, true);
    input.focus();
    return null;
  }
  store.nickname = nickname;
  return nickname;
}

function setNicknameHint(text, invalid) {
  view.setHint("nickname-hint", text, invalid);
}

function connectAs(nickname) {
  conn.start(nickname);
}

function onJoinSubmit(event) {
  event.preventDefault();
  const nickname = checkedNickname();
  if (!nickname) return;
  const input = $("room-input");
  const room = input.value.trim() || DEFAULT_ROOM;
  const problem = roomNameProblem(room);
  input.setAttribute("aria-invalid", problem ? "true" : "false");
  view.setHint("room-hint", problem, Boolean(problem));
  if (problem) {
    input.focus();
    return;
  }
  connectAs(nickname);
  let conv = store.room(room);
  if (!conv) {
    conv = store.room(room, true);
    if (conn.id) joinRoom(conv); // else the coming "connect" joins it
  }
  input.value = "";
  openConversation(conv.key);
}

function onNicknameSubmit(event) {
  event.preventDefault();
  const nickname = checkedNickname();
  if (!nickname) return;
  connectAs(nickname);
  if (store.rooms().length === 0) $("room-input").focus();
}

// ---- layout: drawers on narrow screens ------------------------------------------------------

function setPanel(panel) {
  document.body.dataset.panel = panel;
  $("toggle-sidebar").setAttribute("aria-expanded", String(panel === "sidebar"));
  $("toggle-members").setAttribute("aria-expanded", String(panel === "members"));
  $("scrim").hidden = panel === "";
}

function closePanels() {
  if (document.body.dataset.panel) setPanel("");
}

function togglePanel(panel) {
  setPanel(document.body.dataset.panel === panel ? "" : panel);
}

function autosize(textarea) {
  textarea.style.height = "auto";
  textarea.style.height = `${Math.min(textarea.scrollHeight, 160)}px`;
}

// ---- start -----------------------------------------------------------------------------------

function start() {
  $("join-form").addEventListener("submit", onJoinSubmit);
  $("nickname-form").addEventListener("submit", onNicknameSubmit);
  $("nickname").addEventListener("input", () => {
    const value = $("nickname").value.trim();
    const problem = value ? userNameProblem(value) : "";
    $("nickname").setAttribute("aria-invalid", problem ? "true" : "false");
    if (problem) setNicknameHint(problem, true);
    else if (value && value === conn.nickname) setNicknameHint(STATUS_HINTS[conn.state](value), false);
    else if (conn.nickname) setNicknameHint("Press Enter to switch to this name.", false);
    else setNicknameHint("Press Enter or join a room.", false);
  });
  $("nickname").addEventListener("change", () => {
    // Renaming while connected reconnects under the new name; rooms are rejoined with `since`.
    const nickname = $("nickname").value.trim();
    if (conn.nickname && nickname !== conn.nickname && !userNameProblem(nickname)) {
      store.nickname = nickname;
      connectAs(nickname);
    }
  });
  $("room-input").addEventListener("input", () => {
    const value = $("room-input").value.trim();
    view.setHint("room-hint", value ? roomNameProblem(value) : "", true);
  });
  const composer = $("composer");
  const input = $("message-input");
  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendMessage();
    }
  });
  input.addEventListener("input", () => {
    autosize(input);
    sendTyping();
  });
  $("toggle-sidebar").addEventListener("click", () => togglePanel("sidebar"));
  $("toggle-members").addEventListener("click", () => togglePanel("members"));
  $("scrim").addEventListener("click", closePanels);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closePanels();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && store.active) {
      store.active.unread = 0;
      renderSidebar();
    }
  });
  setInterval(() => {
    if ($("typing").textContent) {
      renderTyping();
      renderMembers();
    }
  }, 1000);

  // Restore the last session: nickname, rooms (history comes back with the joins), open room.
  const nickname = store.nickname;
  $("nickname").value = nickname;
  for (const room of store.savedRooms()) if (!roomNameProblem(room)) store.room(room, true);
  const saved = store.savedActive();
  const first = (saved && store.room(saved)) || store.rooms()[0];
  if (first) store.activate(first.key);
  renderActive();
  if (nickname && !userNameProblem(nickname)) connectAs(nickname);
  else setNicknameHint("Letters, digits and _ - . : @ / (up to 64).", false);
  if (!store.active && matchMedia("(max-width: 719px)").matches) setPanel("sidebar");
  document.documentElement.dataset.ready = "true";
}

start();
