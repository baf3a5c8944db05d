// What the scenario scripts (scenario.mjs, recovery.mjs, cluster_recovery.mjs) share: the
// failure type their checks throw, the runner that prints a scenario's result for the Python
// test to assert, and the recording client of the recovery scripts.

import { io } from "socket.io-client";

/** A scenario's own failure (something did not arrive): its message says it all. */
export class Expected extends Error {}

/**
 * Run `scenarios[name]` within `totalMs`, print its result as one JSON line, then say goodbye
 * on every socket (a polling client's goodbye is an HTTP request still to be made) and let the
 * process end by itself; the unref'd timer only bounds a straggler. `fail(message)` reports
 * and exits.
 */
export async function runScenario(scenarios, name, { fail, sockets, totalMs }) {
  const scenario = scenarios[name];
  if (!scenario) fail(`unknown scenario; expected one of ${Object.keys(scenarios).join(", ")}`);
  const overall = setTimeout(() => fail(`still running after ${totalMs} ms`), totalMs);
  let result;
  try {
    result = await scenario();
  } catch (err) {
    fail(err instanceof Expected ? err.message : (err?.stack ?? String(err)));
  }
  clearTimeout(overall);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  for (const s of sockets) s.disconnect();
  setTimeout(() => {
    process.stderr.write("note: a connection was still open 2 s after disconnect()\n");
    process.exit(0);
  }, 2000).unref();
}

/**
 * A socket that records every event (and every connect/disconnect) in arrival order, for the
 * recovery scripts (recovery.mjs, cluster_recovery.mjs). Its waits reject with `Expected` after
 * `waitMs`; `clients` and `sockets` collect it for the script's failure report and goodbye.
 */
export class RecordingClient {
  constructor(options) {
    const { label, url, user, transport, waitMs, clients, sockets } = options;
    const { reconnection = false, delayMax } = options;
    this.label = label;
    this.waitMs = waitMs;
    clients.push(this);
    this.log = [];
    this.waiters = [];
    this.socket = io(url, {
      forceNew: true,
      transports: [transport],
      auth: { user },
      timeout: waitMs,
      reconnection,
      reconnectionDelay: 50,
      ...(delayMax === undefined ? {} : { reconnectionDelayMax: delayMax }),
      randomizationFactor: 0,
    });
    sockets.push(this.socket);
    const record = (entry) => {
      this.log.push(entry);
      this.waiters = this.waiters.filter((w) => !w());
    };
    this.socket.onAny((event, ...args) => record({ event, args }));
    this.socket.on("connect", () =>
      record({ lifecycle: "connect", sid: this.socket.id, recovered: this.socket.recovered }),
    );
    this.socket.on("disconnect", (reason) => record({ lifecycle: "disconnect", reason }));
    this.socket.on("connect_error", (err) => record({ lifecycle: "connect_error", err: err.message }));
  }

  /** Resolve with the first log entry from index `from` on that matches. */
  waitFor(what, match, from = 0) {
    return new Promise((resolve, reject) => {
      let timer;
      const check = () => {
        const found = this.log.slice(from).find(match);
        if (found === undefined) return false;
        clearTimeout(timer);
        resolve(found);
        return true;
      };
      if (check()) return;
      timer = setTimeout(
        () => reject(new Expected(`${this.label}: no ${what} within ${this.waitMs} ms`)),
        this.waitMs,
      );
      this.waiters.push(check);
    });
  }

  connected(from = 0) {
    return this.waitFor("connect", (e) => e.lifecycle === "connect", from);
  }

  disconnected(from = 0) {
    return this.waitFor("disconnect", (e) => e.lifecycle === "disconnect", from);
  }

  presence(action, sid, from = 0) {
    return this.waitFor(
      `presence ${action} of ${sid}`,
      (e) => e.event === "presence" && e.args[0].action === action && e.args[0].member.sid === sid,
      from,
    );
  }

  /** The envelope data of every message-like event (not presence) from index `from` on. */
  received(from = 0) {
    return this.log
      .slice(from)
      .filter((e) => e.event !== undefined && e.event !== "presence")
      .map((e) => ({ event: e.event, data: e.args[0].data, offset: e.args[0].offset }));
  }

  gotAll(count, from) {
    return this.waitFor(`${count} messages`, () => this.received(from).length >= count, from);
  }

  call(event, payload) {
    return this.socket
      .timeout(this.waitMs)
      .emitWithAck(event, payload)
      .catch((err) => {
        throw new Expected(`${this.label}: no ack for ${event} (${err.message})`);
      });
  }
}
