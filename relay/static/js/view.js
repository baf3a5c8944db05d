// DOM rendering. Every piece of user content goes in through textContent (never innerHTML),
// so a message like `<img src=x onerror=alert(1)>` shows as those characters.

import { senderName, textOf } from "./store.js";

const $ = (id) => document.getElementById(id);
const GROUP_WINDOW_MS = 5 * 60 * 1000;

/** Make an element: el("li", {class: "x", text: "hi", data: {testid: "m"}}, ...children). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "data") {
      for (const [k, v] of Object.entries(value)) if (v !== false) node.dataset[k] = v;
    }
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

/** A coloured initial. Drawn by CSS from data-initial so it adds nothing to text content. */
export function avatar(name) {
  const initial = [...name.replace(/^anon-/, "")][0]?.toUpperCase() ?? "?";
  return el("span", {
    class: "avatar",
    "aria-hidden": "true",
    style: `--hue:${hue(name)}`,
    data: { initial },
  });
}

/** A small decorative label (drawn by CSS): a member's text stays exactly their name. */
function tag(label, cls = "member__tag") {
  return el("span", { class: cls, "aria-hidden": "true", data: { label } });
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

function senderKey(msg) {
  return msg.from?.user ?? msg.from?.sid ?? "";
}

function continues(prev, msg) {
  return (
    prev !== undefined &&
    senderKey(prev) === senderKey(msg) &&
    (prev.event ?? "message") === (msg.event ?? "message") &&
    Math.abs((msg.ts ?? 0) - (prev.ts ?? 0)) < GROUP_WINDOW_MS
  );
}

function messageNode(msg, prev, isOwn) {
  const own = isOwn(msg);
  const name = senderName(msg.from);
  const when = new Date(msg.ts ?? Date.now());
  const classes = ["msg"];
  if (own) classes.push("msg--own");
  if (continues(prev, msg)) classes.push("msg--cont");
  if (msg.pending) classes.push("msg--pending");
  if (msg.failed) classes.push("msg--failed");
  const event = msg.event && msg.event !== "message" ? msg.event : null;
  const meta = el(
    "div",
    { class: "msg__meta" },
    el("span", { class: "msg__from", text: own ? `${name} (you)` : name }),
    event && el("span", { class: "msg__event", text: event }),
    el("time", { datetime: when.toISOString(), title: fullFormat.format(when), text: timeFormat.format(when) }),
  );
  let note = null;
  if (msg.pending) note = el("span", { class: "msg__note", text: "sending…" });
  else if (msg.failed) note = failedNote(msg);
  return el(
    "li",
    {
      class: classes.join(" "),
      data: {
        testid: "message",
        id: msg.id ?? "",
        offset: msg.offset ?? "",
        from: name,
        cid: msg.cid ?? false,
      },
    },
    avatar(name),
    el(
      "div",
      { class: "msg__body" },
      meta,
      el("p", { class: "msg__text", data: { testid: "message-text" }, text: textOf(msg.data) }),
      note,
    ),
  );
}

/**
 * Why our message did not go, and what to do: Retry (sends it again, last) or Discard. Plain
 * buttons, so Tab reaches them and Enter or Space presses them; main.js listens on the list.
 */
function failedNote(msg) {
  const text = textOf(msg.data);
  const short = text.length > 40 ? `${text.slice(0, 40)}…` : text;
  const actions = msg.cid
    ? el(
        "span",
        { class: "msg__actions" },
        el("button", {
          type: "button",
          class: "link-button",
          data: { action: "retry", testid: "retry" },
          "aria-label": `Retry sending: ${short}`,
          text: "Retry",
        }),
        el("button", {
          type: "button",
          class: "link-button link-button--quiet",
          data: { action: "discard", testid: "discard" },
          "aria-label": `Discard: ${short}`,
          text: "Discard",
        }),
      )
    : null;
  return el(
    "span",
    { class: "msg__note" },
    el("span", { data: { testid: "failed" }, text: msg.failed }),
    actions,
  );
}

/** Keep the view pinned to the newest message unless the reader scrolled up. */
function stickToBottom(update) {
  const scroller = $("messages-scroll");
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  update();
  if (atBottom) scroller.scrollTop = scroller.scrollHeight;
}

/** Render every message of `conv` (on switching conversations). */
export function renderMessages(conv, isOwn) {
  const list = $("messages");
  $("welcome").hidden = conv !== null;
  list.replaceChildren(
    ...(conv?.messages ?? []).map((m, i) => messageNode(m, conv.messages[i - 1], isOwn)),
  );
  list.setAttribute("aria-label", conv ? `Messages in ${conv.name}` : "Messages");
  const scroller = $("messages-scroll");
  scroller.scrollTop = scroller.scrollHeight;
}

/** Show message `index` of the open conversation, and regroup the one after it. */
export function insertMessage(conv, index, isOwn) {
  const list = $("messages");
  stickToBottom(() => {
    const node = messageNode(conv.messages[index], conv.messages[index - 1], isOwn);
    list.insertBefore(node, list.children[index] ?? null);
    const next = conv.messages[index + 1];
    if (next) list.children[index + 1].replaceWith(messageNode(next, conv.messages[index], isOwn));
  });
}

/** Take message node `index` away (its message is gone) and regroup the one now there. */
export function removeMessage(conv, index, isOwn) {
  const list = $("messages");
  list.children[index]?.remove();
  const now = conv.messages[index];
  if (now && list.children[index]) {
    list.children[index].replaceWith(messageNode(now, conv.messages[index - 1], isOwn));
  }
}

/** Replace the node of message `index` (a pending message got its ack, or failed). */
export function replaceMessage(conv, index, isOwn) {
  const list = $("messages");
  list.children[index]?.replaceWith(
    messageNode(conv.messages[index], conv.messages[index - 1], isOwn),
  );
}

/** The sidebar: rooms and direct chats, with unread badges. */
export function renderConversations(store, actions) {
  const item = (conv) => {
    const active = conv.key === store.activeKey;
    const label = conv.kind === "room" ? conv.name : conv.name;
    const badge =
      conv.unread > 0
        ? el("span", {
            class: "badge",
            data: { testid: "unread" },
            "aria-label": `${conv.unread} unread`,
            text: conv.unread > 99 ? "99+" : String(conv.unread),
          })
        : null;
    const open = el(
      "button",
      {
        type: "button",
        class: "conversation__open",
        "aria-current": active ? "true" : false,
        onclick: () => actions.open(conv.key),
      },
      conv.kind === "room"
        ? el("span", { class: "conversation__sigil", "aria-hidden": "true", text: "#" })
        : avatar(label),
      el("span", { class: "conversation__name", text: label }),
      badge,
    );
    const close = el(
      "button",
      {
        type: "button",
        class: "conversation__close",
        "aria-label": conv.kind === "room" ? `Leave ${label}` : `Close chat with ${label}`,
        title: conv.kind === "room" ? "Leave room" : "Close",
        onclick: () => actions.close(conv.key),
      },
      "×",
    );
    return el(
      "li",
      {
        class: `conversation${active ? " conversation--active" : ""}${conv.unread ? " conversation--unread" : ""}`,
        data: { testid: conv.kind === "room" ? "room-tab" : "direct-tab", key: conv.key, name: label },
      },
      open,
      close,
    );
  };
  const rooms = store.rooms();
  const directs = store.directs();
  $("room-list").replaceChildren(...rooms.map(item));
  $("direct-list").replaceChildren(...directs.map(item));
  $("rooms-empty").hidden = rooms.length > 0;
  $("directs-empty").hidden = directs.length > 0;
  const total = store.totalUnread();
  $("unread-total").hidden = total === 0;
  document.title = total > 0 ? `(${total}) relay chat` : "relay chat";
}

/** The members panel for the open room; clicking someone opens a direct chat. */
export function renderMembers(conv, selfSid, selfUser, onPick) {
  const list = $("members");
  const note = $("members-note");
  if (!conv || conv.kind !== "room") {
    list.replaceChildren();
    $("members-count").textContent = "";
    note.hidden = false;
    note.textContent =
      conv?.kind === "direct"
        ? `A private conversation with ${conv.name}.`
        : "Members of the open room show here.";
    return;
  }
  const people = conv.people();
  note.hidden = true;
  $("members-count").textContent = `(${people.length})`;
  list.replaceChildren(
    ...people.map((p) => {
      const name = senderName({ user: p.user, sid: p.sids[0] });
      const isSelf = p.sids.includes(selfSid) || (p.user !== null && p.user === selfUser);
      const tabs = p.sids.length > 1 ? `${p.sids.length} tabs` : "";
      const typing = p.sids.some((sid) => (conv.typing.get(sid)?.until ?? 0) > Date.now());
      let label = isSelf ? `${name} (you)` : `${name}: send a direct message`;
      if (tabs) label += `, ${tabs}`;
      if (typing) label += ", typing";
      return el(
        "li",
        { class: "member", data: { testid: "member", user: name } },
        el(
          "button",
          {
            type: "button",
            class: "member__button",
            disabled: isSelf,
            "aria-label": label,
            title: isSelf ? "This is you" : `Message ${name} privately`,
            onclick: () => onPick({ sid: p.sids[0], user: p.user }),
          },
          avatar(name),
          el("span", { class: "member__name", text: name }),
          isSelf && tag("you"),
          tabs && tag(tabs),
          typing && tag("typing…", "member__typing"),
        ),
      );
    }),
  );
}

export function renderTyping(names) {
  const node = $("typing");
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = "Several people are typing…";
  node.textContent = text;
  node.dataset.testid = "typing";
  node.classList.toggle("typing--on", text !== "");
}

/** The status pill: its text is exactly "connected", "reconnecting" or "offline". */
export function renderStatus(state, idle = false) {
  const node = $("status");
  node.textContent = state;
  node.dataset.state = state;
  node.toggleAttribute("data-idle", idle); // not signed in yet: offline, but not alarming
}

export function renderHeader(conv) {
  const title = $("conversation-title");
  if (!conv) title.textContent = "Welcome";
  else title.textContent = conv.kind === "room" ? `# ${conv.name}` : `@ ${conv.name}`;
  const input = $("message-input");
  const send = document.querySelector("[data-testid=send]");
  input.disabled = conv === null;
  send.disabled = conv === null;
  input.placeholder = conv
    ? `Message ${conv.kind === "room" ? "#" : "@"}${conv.name}`
    : "Join a room to start chatting";
}

/**
 * A transient notice above the messages (connection refused, send failed…), with a button
 * when there is one thing to do about it (`action`: {label, run}).
 */
export function showBanner(text, kind = "error", action = null) {
  const node = $("banner");
  node.replaceChildren(el("span", { class: "banner__text", text }));
  if (action) {
    node.append(
      el("button", {
        type: "button",
        class: "button button--small",
        data: { testid: "banner-action" },
        text: action.label,
        onclick: action.run,
      }),
    );
  }
  node.dataset.kind = kind;
  node.hidden = !text;
}

export function setHint(id, text, invalid) {
  const hint = $(id);
  hint.textContent = text;
  hint.classList.toggle("hint--error", Boolean(invalid));
}

const STATE_TEXT = { connected: "Connected.", reconnecting: "Connecting…", offline: "Offline." };

function expiryText(expires) {
  if (!expires) return "The token does not expire.";
  const sameDay = expires.toDateString() === new Date().toDateString();
  const format = new Intl.DateTimeFormat(
    undefined,
    sameDay ? { timeStyle: "short" } : { dateStyle: "medium", timeStyle: "short" },
  );
  return `The token is valid until ${format.format(expires)}.`;
}

/**
 * Who the page is: a nickname field (open mode), a token field (`mode` "ask": the relay wants a
 * token and the page has none), or the token's user (`mode` "token").
 */
export function renderIdentity({ mode, user = "", expires = null, state = "offline" }) {
  $("nickname-form").hidden = mode !== "nickname";
  $("token-form").hidden = mode !== "ask";
  $("token-signed").hidden = mode !== "token";
  if (mode === "token") {
    $("token-user").textContent = user;
    $("token-status").textContent = `${STATE_TEXT[state] ?? ""} ${expiryText(expires)}`;
  }
  $("welcome-text").textContent =
    mode === "nickname"
      ? "Pick a nickname, join a room, and everyone in it sees your messages instantly."
      : "Join a room, and everyone in it sees your messages instantly. This relay lets people in with an access token.";
}
