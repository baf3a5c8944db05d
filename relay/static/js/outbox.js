// What the page sends (publish and direct), one at a time, in the order it was written.
//
// One request is in flight at most, and the next waits for its answer: a message refused for
// going too fast must not be overtaken by the one after it. A `rate_limited` answer with
// `retry_after_ms` is not a failure: the same message goes again after that delay, and the rest
// wait behind it. Any other refusal fails that message (the page offers to retry it, which
// queues it again, last) and the queue goes on.
//
// The outbox sends only while it is open: the page opens it once a connection is up and its
// rooms are rejoined, and closes it when the connection goes. A request whose connection went
// before the answer stays first in line: after the rejoin, the page removes it if the room's
// replay shows it arrived (`remove`, by its client id), and the outbox sends it again if not.
// No DOM and no sockets here: `send(item)` answers the server's acknowledgement.

/** The longest a `rate_limited` answer makes a message wait, and the shortest. */
export const MAX_WAIT_MS = 60000;
export const MIN_WAIT_MS = 20;
/** Give up (fail the message, so the person can retry it) after this many waits in a row. */
export const MAX_WAITS = 50;

export class Outbox {
  /**
   * send(item) -> Promise<ack>: rejects when the connection went before the answer (or no
   * answer came); sent(item, ack) and failed(item, error) report each message's end;
   * sleep(ms) -> Promise (a test may pass its own clock).
   */
  constructor({ send, sent, failed, sleep = (ms) => new Promise((r) => setTimeout(r, ms)) }) {
    this.send = send;
    this.sent = sent;
    this.failed = failed;
    this.sleep = sleep;
    this.items = []; // {cid, waits, ...the caller's fields}
    this.isOpen = false;
    this.running = null;
  }

  /** Queue `item` (it needs a unique `cid`), last. */
  enqueue(item) {
    this.items.push({ ...item, waits: 0 });
    this.#kick();
  }

  /** Forget the message `cid` (it is known to have arrived, or the person discarded it). */
  remove(cid) {
    const index = this.items.findIndex((i) => i.cid === cid);
    if (index >= 0) this.items.splice(index, 1);
    return index >= 0;
  }

  /** Take every queued message out, in order (whoever was to send them signed out). */
  clear() {
    const items = this.items;
    this.items = [];
    return items;
  }

  has(cid) {
    return this.items.some((i) => i.cid === cid);
  }

  /** Sending may go on (connected, rooms rejoined). */
  open() {
    this.isOpen = true;
    this.#kick();
  }

  /** Stop sending (the connection went); what is queued waits for `open`. */
  close() {
    this.isOpen = false;
  }

  /** Settles once nothing is being sent (for tests). */
  idle() {
    return this.running ?? Promise.resolve();
  }

  #kick() {
    if (this.running || !this.isOpen || this.items.length === 0) return;
    this.running = this.#drain().finally(() => {
      this.running = null;
      this.#kick();
    });
  }

  async #drain() {
    while (this.isOpen && this.items.length > 0) {
      const item = this.items[0];
      let ack;
      try {
        ack = await this.send(item);
      } catch {
        // The connection went before the answer: the page opens the outbox again after the
        // next rejoin, which also tells whether this one arrived.
        this.isOpen = false;
        return;
      }
      if (this.items[0] !== item) continue; // removed meanwhile: its room showed it arrived
      const error = ack?.ok ? null : (ack?.error ?? { code: "internal", message: "no answer" });
      const wait = error?.code === "rate_limited" ? error.retry_after_ms : undefined;
      if (Number.isFinite(wait) && item.waits < MAX_WAITS) {
        item.waits += 1;
        await this.sleep(Math.min(MAX_WAIT_MS, Math.max(MIN_WAIT_MS, wait)));
        continue;
      }
      this.items.shift();
      if (error) this.failed(item, error);
      else this.sent(item, ack);
    }
  }
}
