// One Socket.IO connection to the relay that served this page, and its status:
// "connected", "reconnecting" or "offline".
//
// socket.io-client reconnects by itself after a drop. When the browser says it is offline we
// close the socket ourselves (an already-open WebSocket may linger for a while otherwise) and
// open it again when the browser is back online; either way the page rejoins its rooms with
// `since` on every "connect", so nothing is missed and nothing is shown twice.
//
// A connection the server refuses (a `connect_error` at connect, or later: relay ends a
// connection whose token expires with a `connect_error` `unauthorized`) is not retried:
// socket.io-client gives such a socket up, and so does this class — it drops the socket (which
// fails the acknowledgements still awaited on it) and reports the refusal, so the page can ask
// for a new name or token and `start` again with it.

import { io } from "../vendor/socket.io/socket.io.esm.min.js";

const ACK_TIMEOUT_MS = 10000;

export class Connection {
  /**
   * handlers: {status(state), connected(socket), refused({code, message}),
   *            event(name, payload)}
   */
  constructor(handlers) {
    this.handlers = handlers;
    this.socket = null;
    this.auth = null; // the Socket.IO `auth` of the current socket
    this.user = null; // who we connect as (the nickname, or the token's user)
    this.state = "offline";
    window.addEventListener("offline", () => this.#browserOffline());
    window.addEventListener("online", () => this.#browserOnline());
  }

  get id() {
    return this.socket?.connected ? this.socket.id : null;
  }

  /**
   * Connect as `user` with `auth` ({user} or {token}); a no-op when already connected or
   * connecting with the same `auth`.
   */
  start(auth, user) {
    if (this.socket && sameAuth(this.auth, auth)) return;
    this.stop();
    this.auth = auth;
    this.user = user;
    const socket = io({
      auth: (cb) => cb(this.auth),
      reconnectionDelay: 500,
      reconnectionDelayMax: 5000,
      autoConnect: false,
    });
    socket.on("connect", () => {
      this.#setState("connected");
      this.handlers.connected(socket);
    });
    socket.on("disconnect", () => {
      this.#setState(socket.active && navigator.onLine ? "reconnecting" : "offline");
    });
    socket.on("connect_error", (err) => {
      if (socket.active) {
        this.#setState(navigator.onLine ? "reconnecting" : "offline");
        return;
      }
      // Refused by the server (bad name, missing, bad or expired token).
      this.#drop(socket);
      this.#setState("offline");
      const data = err?.data ?? {};
      this.handlers.refused({
        code: data.code ?? "unavailable",
        message: data.message ?? String(err?.message ?? err),
      });
    });
    socket.io.on("reconnect_attempt", () => {
      this.#setState(navigator.onLine ? "reconnecting" : "offline");
    });
    socket.onAny((name, payload) => this.handlers.event(name, payload));
    this.socket = socket;
    if (navigator.onLine) {
      this.#setState("reconnecting");
      socket.connect();
    }
  }

  /** Close the connection and forget who it was for. */
  stop() {
    if (this.socket) this.#drop(this.socket);
    this.user = null;
    this.#setState("offline");
  }

  /**
   * Emit with an acknowledgement; resolves to the ack. Rejects after `timeoutMs`, when the
   * socket goes away before the answer, or at once when there is no socket.
   */
  request(event, payload, timeoutMs = ACK_TIMEOUT_MS) {
    if (!this.socket) return Promise.reject(new Error("not connected"));
    return this.socket.timeout(timeoutMs).emitWithAck(event, payload);
  }

  /** Fire and forget, dropped when not connected (typing notices). */
  volatile(event, payload) {
    if (this.socket?.connected) this.socket.volatile.emit(event, payload);
  }

  #drop(socket) {
    socket.offAny();
    socket.removeAllListeners();
    socket.io.removeAllListeners();
    // (A socket ended by a `connect_error` after it connected still says it is connected:
    // disconnecting it is what fails the acknowledgements it still owes.)
    socket.disconnect();
    if (this.socket === socket) {
      this.socket = null;
      this.auth = null;
    }
  }

  #browserOffline() {
    if (this.socket) this.socket.disconnect();
    this.#setState("offline");
  }

  #browserOnline() {
    if (this.socket && !this.socket.connected) {
      this.#setState("reconnecting");
      this.socket.connect();
    }
  }

  #setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.handlers.status(state);
  }
}

function sameAuth(a, b) {
  return a !== null && b !== null && a.user === b.user && a.token === b.token;
}
