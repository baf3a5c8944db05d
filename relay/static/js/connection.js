// One Socket.IO connection to the relay that served this page, and its status:
// "connected", "reconnecting" or "offline".
//
// socket.io-client reconnects by itself after a drop. When the browser says it is offline we
// close the socket ourselves (an already-open WebSocket may linger for a while otherwise) and
// open it again when the browser is back online; either way the page rejoins its rooms with
// `since` on every "connect", so nothing is missed and nothing is shown twice.

import { io } from "../vendor/socket.io/socket.io.esm.min.js";
import { authFor } from "./credentials.js";

const ACK_TIMEOUT_MS = 10000;

export class Connection {
  /**
   * handlers: {status(state), connected(socket), refused({code, message}),
   *            event(name, payload)}
   */
  constructor(handlers) {
    this.handlers = handlers;
    this.socket = null;
    this.nickname = null;
    this.state = "offline";
    window.addEventListener("offline", () => this.#browserOffline());
    window.addEventListener("online", () => this.#browserOnline());
  }

  get id() {
    return this.socket?.connected ? this.socket.id : null;
  }

  /** Connect as `nickname` (no-op when already connected or connecting as them). */
  start(nickname) {
    if (this.socket && this.nickname === nickname) {
      if (!this.socket.active && navigator.onLine) this.socket.connect(); // refused earlier
      return;
    }
    this.stop();
    this.nickname = nickname;
    const socket = io({
      auth: (cb) => {
        authFor(nickname).then(cb);
      },
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
      // Refused by the server (bad name, bad token): socket.io-client will not retry.
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

  stop() {
    if (!this.socket) return;
    this.socket.offAny();
    this.socket.removeAllListeners();
    this.socket.io.removeAllListeners();
    this.socket.disconnect();
    this.socket = null;
    this.nickname = null;
    this.#setState("offline");
  }

  /** Emit with an acknowledgement; resolves to the ack, rejects after a timeout. */
  request(event, payload, timeoutMs = ACK_TIMEOUT_MS) {
    if (!this.socket) return Promise.reject(new Error("not connected"));
    return this.socket.timeout(timeoutMs).emitWithAck(event, payload);
  }

  /**
   * Emit with an acknowledgement and no timeout: while disconnected the client buffers the
   * event and sends it on reconnect, so a message typed offline is not lost.
   */
  send(event, payload) {
    if (!this.socket) return Promise.reject(new Error("not connected"));
    return this.socket.emitWithAck(event, payload);
  }

  /** Fire and forget, dropped when not connected (typing notices). */
  volatile(event, payload) {
    if (this.socket?.connected) this.socket.volatile.emit(event, payload);
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
