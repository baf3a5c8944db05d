// The chat page: wires the store (state), the connection (socket), the outbox (what we send)
// and the view (DOM).

import { Connection } from "./connection.js";
import {
  forgetLegacyToken,
  forgetToken,
  saveToken,
  savedToken,
  serverWantsToken,
  takeTokenFromUrl,
  tokenAuth,
  tokenClaims,
  tokenFromInput,
  tokenProblem,
} from "./credentials.js";
import { roomNameProblem, userNameProblem } from "./names.js";
import { Outbox } from "./outbox.js";
import { Store, senderName, textOf } from "./store.js";
import * as view from "./view.js";

const $ = (id) => document.getElementById(id);
const TYPING_SEND_EVERY_MS = 2000;
const TYPING_SHOWN_MS = 4000;
const DEFAULT_ROOM = "lobby";
const SEND_TIMEOUT_MS = 30000;
/** `join` and `presence` answered `rate_limited` are tried again this many times at most. */
const MAX_JOIN_WAITS = 20;

const store = new Store();
const ownSids = new Set(); // every sid this page has had, so our older messages stay "ours"
let lastTypingSent = 0;
/** Whether this relay lets connections in only with a token (its page says so, or it refused). */
let tokenRequired = false;

const conn = new Connection({
  status: onStatus,
  connected: onConnected,
  refused: onRefused,
  event: onServerEvent,
});

const outbox = new Outbox({
  send: sendQueued,
  sent: onSent,
  failed: (item, error) => fail(item.conv, item.cid, `Not sent: ${error.message}`),
});

const isOwn = (msg) =>
  Boolean(msg.placeholder || msg.fromAck) ||
  (msg.from?.sid && ownSids.has(msg.from.sid)) ||
  (msg.from?.user != null && msg.from.user === conn.user);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- rendering shortcuts -------------------------------------------------------------------

function renderSidebar() {
  view.renderConversations(store, { open: openConversation, close: closeConversation });
}

function renderMembers() {
  view.renderMembers(store.active, conn.id, conn.user, openDirect);
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

function renderIdentity() {
  const token = savedToken();
  if (token) {
    const claims = tokenClaims(token) ?? {};
    const expires = Number.isFinite(claims.exp) ? new Date(claims.exp * 1000) : null;
    view.renderIdentity({ mode: "token", user: claims.sub ?? "?", expires, state: conn.state });
  } else {
    view.renderIdentity({ mode: tokenRequired ? "ask" : "nickname" });
  }
}

// ---- who we are ----------------------------------------------------------------------------

/** The `auth` and name to connect with, or null when a token is needed and there is none. */
function credentials() {
  const token = savedToken();
  if (token) return { auth: tokenAuth(token), user: tokenClaims(token)?.sub ?? null };
  if (tokenRequired) return null;
  const nickname = store.nickname;
  return userNameProblem(nickname) ? null : { auth: { user: nickname }, user: nickname };
}

/** Connect (or stay connected) as who the page is now; asks for a token when one is needed. */
function connect() {
  const who = credentials();
  if (!who) {
    if (tokenRequired) askForToken("Enter your access token to connect.", false);
    return false;
  }
  conn.start(who.auth, who.user);
  renderIdentity();
  return true;
}

/** Show the token field, say why, and put it in front of the person. */
function askForToken(why, isError, banner = "") {
  tokenRequired = true;
  renderIdentity();
  view.setHint("token-hint", why, isError);
  $("token").setAttribute("aria-invalid", isError ? "true" : "false");
  if (banner) view.showBanner(banner, "error", { label: "Enter a token", run: showTokenField });
  showTokenField();
}

function showTokenField() {
  if (matchMedia("(max-width: 719px)").matches) setPanel("sidebar");
  $("token").focus();
}

function onTokenSubmit(event) {
  event.preventDefault();
  const input = $("token");
  const token = tokenFromInput(input.value);
  const problem = tokenProblem(token);
  input.setAttribute("aria-invalid", problem ? "true" : "false");
  if (problem) {
    view.setHint("token-hint", problem, true);
    input.focus();
    return;
  }
  saveToken(token);
  input.value = "";
  view.setHint("token-hint", "", false);
  view.showBanner("");
  connect();
  if (store.rooms().length === 0) $("room-input").focus();
  else {
    closePanels();
    $("message-input").focus();
  }
}

function signOut() {
  forgetToken();
  outbox.close();
  // Not to be sent later under whoever signs in next: they stay, failed, to retry or discard.
  for (const item of outbox.clear()) fail(item.conv, item.cid, "Not sent: you signed out.");
  conn.stop();
  renderIdentity();
  renderMembers();
  if (tokenRequired) {
    view.setHint("token-hint", "Signed out. Enter a token to connect again.", false);
    $("token").focus();
  } else {
    $("nickname").focus();
  }
}

// ---- connection ----------------------------------------------------------------------------

const STATUS_HINTS = {
  connected: (name) => `Connected as ${name}.`,
  reconnecting: (name) => `Connecting as ${name}…`,
  offline: (name) => `Offline; you will be back as ${name}.`,
};

function onStatus(state) {
  if (state !== "connected") outbox.close();
  // Grey, not red, while the page is not trying to connect (no name or token yet).
  view.renderStatus(state, conn.socket === null);
  document.body.dataset.connection = state; // dims what may be stale (members) when not live
  if (conn.user && !savedToken() && conn.socket) {
    setNicknameHint(STATUS_HINTS[state](conn.user), false);
  }
  renderIdentity();
  if (state === "connected") view.showBanner("");
  else if (state === "offline" && !navigator.onLine) {
    view.showBanner("You are offline. Messages you send go out when you are back.", "info");
  }
}

async function onConnected(socket) {
  ownSids.add(socket.id);
  renderMembers();
  // A fresh connection is in no room: (re)join each, resuming after the last offset seen.
  // The replays show which of our unanswered messages arrived; then the rest go (again).
  await Promise.all(store.rooms().map((conv) => joinRoom(conv)));
  if (conn.socket === socket && socket.connected) outbox.open();
}

function onRefused({ code, message }) {
  outbox.close();
  if (code === "unauthorized") {
    const hadToken = savedToken() !== null;
    forgetToken();
    let why = "This relay needs an access token to connect.";
    if (hadToken && /expired/i.test(message)) why = "Your access token has expired.";
    else if (hadToken) why = `The server refused the token: ${message}.`;
    const next = hadToken ? "Paste a new one to connect again." : "Paste yours to connect.";
    askForToken(
      `${why} ${next}`,
      true,
      `${why} Your rooms and unsent messages are kept until you are back.`,
    );
  } else if (code === "bad_request" && !savedToken()) {
    setNicknameHint(message, true);
    $("nickname").focus();
  } else {
    view.showBanner(`Could not connect: ${message}`);
  }
}

/**
 * `request`, sent again after the delay a `rate_limited` answer names (`retry_after_ms`), on
 * the same connection; rejects when that connection goes meanwhile.
 */
async function requestPatiently(event, payload) {
  const socket = conn.socket;
  for (let waits = 0; ; waits += 1) {
    const ack = await conn.request(event, payload);
    const wait = ack?.ok ? undefined : ack?.error?.retry_after_ms;
    if (ack?.error?.code !== "rate_limited" || !Number.isFinite(wait) || waits >= MAX_JOIN_WAITS) {
      return ack;
    }
    await sleep(Math.min(60000, Math.max(20, wait)));
    if (conn.socket !== socket || !socket?.connected) throw new Error("the connection went");
  }
}

/** The envelopes (and typing notices) of rooms whose `join` is in flight, by room. */
const held = new Map();

async function joinRoom(conv) {
  conv.replaying = true;
  // What the join replays arrives before its answer, and only the answer's epoch says how to
  // read its offsets: hold it until then.
  const replayed = [];
  held.set(conv.name, replayed);
  const join = { room: conv.name, since: conv.lastOffset };
  if (conv.epoch !== null) join.epoch = conv.epoch;
  let ack;
  try {
    ack = await requestPatiently("join", join);
  } catch {
    return; // the connection dropped meanwhile; the next "connect" rejoins
  } finally {
    conv.replaying = false;
    if (held.get(conv.name) === replayed) held.delete(conv.name);
  }
  if (!ack.ok) {
    view.showBanner(`Could not join ${conv.name}: ${ack.error.message}`);
    if (!conv.loaded) closeConversation(conv.key, false);
    return;
  }
  // Another epoch: the room started again (a restarted relay, or a room forgotten), and what
  // it replayed is new, even at offsets we showed before.
  conv.noteEpoch(ack.epoch);
  for (const [name, env] of replayed) {
    if (name === "typing") conv.noteOffset(env.offset); // old news: only its offset counts
    else onMessage(env);
  }
  conv.loaded = true;
  try {
    const presence = await requestPatiently("presence", { room: conv.name });
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
  const hold = held.get(env.room);
  if (hold) {
    hold.push(["typing", env]);
    return;
  }
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
    conv = store.direct(ownSids.has(env.from?.sid) ? { sid: null, user: conn.user } : env.from);
    conv.loaded = true;
  } else {
    conv = store.room(env.room);
    if (!conv) return; // a room we left; late delivery
    const hold = held.get(env.room);
    if (hold) {
      hold.push(["message", env]);
      return;
    }
  }
  const cid = env.data && typeof env.data === "object" ? env.data.cid : undefined;
  if (typeof cid === "string" && isOwn(env)) {
    // Our message, back from the room: it arrived (whatever became of its answer).
    outbox.remove(cid);
    settlePending(conv, cid);
  }
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
  if (conv === store.active) view.removeMessage(conv, index, isOwn);
}

// ---- sending -------------------------------------------------------------------------------

/** A client id for a message (crypto.randomUUID needs a secure context; this does not). */
function newCid() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function sendMessage() {
  const input = $("message-input");
  const text = input.value.trim();
  const conv = store.active;
  if (!text || !conv) return;
  queueMessage(conv, text);
  input.value = "";
  autosize(input);
  lastTypingSent = 0;
}

/** Show `text` as ours, "sending…", and queue it: it goes out after everything before it. */
function queueMessage(conv, text) {
  const cid = newCid();
  const data = { text, cid };
  const request =
    conv.kind === "room"
      ? { event: "publish", payload: { room: conv.name, data } }
      : {
          event: "direct",
          payload: { ...(conv.peer.user ? { user: conv.peer.user } : { to: conv.peer.sid }), data },
        };
  const pending = {
    id: `local:${cid}`,
    cid,
    room: conv.kind === "room" ? conv.name : null,
    event: "message",
    from: { sid: conn.id, user: conn.user },
    data,
    offset: conv.kind === "room" ? Number.POSITIVE_INFINITY : null,
    ts: Date.now(),
    placeholder: true,
    pending: true,
  };
  const index = conv.add(pending);
  if (conv === store.active) view.insertMessage(conv, index, isOwn);
  outbox.enqueue({ cid, conv, ...request });
}

/** Send one queued message; no answer while still connected is an answer too. */
async function sendQueued(item) {
  const socket = conn.socket;
  try {
    return await conn.request(item.event, item.payload, SEND_TIMEOUT_MS);
  } catch (err) {
    if (socket && conn.socket === socket && socket.connected) {
      return { ok: false, error: { code: "timeout", message: "the server did not answer in time" } };
    }
    throw err; // the connection went: the outbox keeps it for the next one
  }
}

function onSent(item, ack) {
  const { conv, cid } = item;
  const index = conv.messages.findIndex((m) => m.placeholder && m.cid === cid);
  if (index < 0) return; // the room showed it already
  const pending = conv.messages[index];
  const sent = {
    ...pending,
    id: ack.id,
    offset: ack.offset ?? null,
    placeholder: false,
    pending: false,
    fromAck: true,
    from: { sid: conn.id ?? pending.from.sid, user: conn.user },
  };
  if (conv.kind === "direct" && ack.delivered === 0) {
    sent.failed = `Not delivered: ${conv.name} is not connected.`;
  }
  settlePending(conv, cid);
  const at = conv.add(sent);
  if (at >= 0 && conv === store.active) view.insertMessage(conv, at, isOwn);
}

function fail(conv, cid, reason) {
  const index = conv.messages.findIndex((m) => m.placeholder && m.cid === cid);
  if (index < 0) return;
  conv.messages[index] = { ...conv.messages[index], pending: false, failed: reason };
  if (conv === store.active) view.replaceMessage(conv, index, isOwn);
}

/** The failed message `cid` of the open conversation, and its index. */
function failedMessage(cid) {
  const conv = store.active;
  const index = conv ? conv.messages.findIndex((m) => m.cid === cid && m.failed) : -1;
  return index < 0 ? null : { conv, index, message: conv.messages[index] };
}

/** Send a failed message again: it leaves its place and goes last, as if written now. */
function retryMessage(cid) {
  const found = failedMessage(cid);
  if (!found) return;
  discardMessage(cid);
  queueMessage(found.conv, textOf(found.message.data));
  $("message-input").focus();
}

function discardMessage(cid) {
  const found = failedMessage(cid);
  if (!found) return;
  found.conv.messages.splice(found.index, 1);
  view.removeMessage(found.conv, found.index, isOwn);
  $("message-input").focus();
}

function onMessageAction(event) {
  const button = event.target.closest("button[data-action]");
  const cid = button?.closest("[data-cid]")?.dataset.cid;
  if (!cid) return;
  if (button.dataset.action === "retry") retryMessage(cid);
  else if (button.dataset.action === "discard") discardMessage(cid);
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
  for (const m of conv.messages) if (m.placeholder) outbox.remove(m.cid); // (not sent: dropped)
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

function onJoinSubmit(event) {
  event.preventDefault();
  const byToken = savedToken() !== null || tokenRequired; // (the token names us)
  if (!byToken && !checkedNickname()) return;
  const input = $("room-input");
  const room = input.value.trim() || DEFAULT_ROOM;
  const problem = roomNameProblem(room);
  input.setAttribute("aria-invalid", problem ? "true" : "false");
  view.setHint("room-hint", problem, Boolean(problem));
  if (problem) {
    input.focus();
    return;
  }
  let conv = store.room(room);
  const isNew = !conv;
  if (isNew) conv = store.room(room, true);
  input.value = "";
  openConversation(conv.key);
  connect(); // (asks for a token when one is needed: the room is joined once connected)
  if (isNew && conn.id) joinRoom(conv); // else the coming "connect" joins it
}

function onNicknameSubmit(event) {
  event.preventDefault();
  if (!checkedNickname()) return;
  connect();
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
  $("token-form").addEventListener("submit", onTokenSubmit);
  $("sign-out").addEventListener("click", signOut);
  $("messages").addEventListener("click", onMessageAction);
  $("nickname").addEventListener("input", () => {
    const value = $("nickname").value.trim();
    const problem = value ? userNameProblem(value) : "";
    $("nickname").setAttribute("aria-invalid", problem ? "true" : "false");
    if (problem) setNicknameHint(problem, true);
    else if (value && value === conn.user) setNicknameHint(STATUS_HINTS[conn.state](value), false);
    else if (conn.user) setNicknameHint("Press Enter to switch to this name.", false);
    else setNicknameHint("Press Enter or join a room.", false);
  });
  $("nickname").addEventListener("change", () => {
    // Renaming while connected reconnects under the new name; rooms are rejoined with `since`.
    const nickname = $("nickname").value.trim();
    if (conn.user && !savedToken() && nickname !== conn.user && !userNameProblem(nickname)) {
      store.nickname = nickname;
      connect();
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

  // A token in the link (`#token=...`) leaves the address bar before anything else runs.
  forgetLegacyToken();
  takeTokenFromUrl();
  tokenRequired = serverWantsToken();

  // Restore the last session: nickname, rooms (history comes back with the joins), open room.
  const nickname = store.nickname;
  $("nickname").value = nickname;
  for (const room of store.savedRooms()) if (!roomNameProblem(room)) store.room(room, true);
  const saved = store.savedActive();
  const first = (saved && store.room(saved)) || store.rooms()[0];
  if (first) store.activate(first.key);
  renderActive();
  renderIdentity();
  const narrow = matchMedia("(max-width: 719px)").matches;
  if (savedToken() || (!tokenRequired && nickname && !userNameProblem(nickname))) connect();
  else if (tokenRequired) showTokenField(); // (the one thing to do first)
  else setNicknameHint("Letters, digits and _ - . : @ / (up to 64).", false);
  if (!store.active && narrow) setPanel("sidebar");
  document.documentElement.dataset.ready = "true";
}

start();
