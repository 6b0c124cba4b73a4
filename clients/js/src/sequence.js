// One room's sequence of stored events (PROTOCOL.md version 2, `seq`), as this client has seen it.
//
// Events reach a client out of `seq` order (two senders' fan-outs interleave; on AWS each is its
// own Lambda invocation), twice (live and again in a recovery page), or not at all (in flight
// when the connection dropped). This keeps what the caller has been given:
//
//   synced   every event up to this seq has been given to the caller, or is no event (a hole:
//            an event replaced by a later one of its message, or a writer that failed);
//   held     seqs above `synced` that the caller has already (a message of a `joined` history);
//   buffer   events above `synced` received but not yet given, waiting for the ones before them.
//
// An event is given once, in seq order: when its seq is `synced + 1`, or when a page of events
// (`joined` with `sinceSeq`, `history` with `afterSeq`) shows that every event before it is in
// the page or no event. A page is contiguous: it holds every stored event after its start up to
// its last one, so the seqs it skips are holes (docs/protocol-notes.md, "So seq has holes").

export class RoomSequence {
  constructor() {
    /** @type {number|null} null until the room's first `joined` */
    this.synced = null;
    /** @type {Set<number>} */
    this.held = new Set();
    /** @type {Map<number, object>} */
    this.buffer = new Map();
    /** The highest seq known to exist (from an `ack`), even if its event has not come. */
    this.expected = 0;
  }

  get started() {
    return this.synced !== null;
  }

  /** Whether the caller has the event of this seq already. */
  has(seq) {
    return this.synced !== null && (seq <= this.synced || this.held.has(seq));
  }

  /** Takes an event; false if it is a duplicate (given already, or waiting already). */
  offer(seq, item) {
    if (this.has(seq) || this.buffer.has(seq)) return false;
    this.buffer.set(seq, item);
    return true;
  }

  /** A seq that exists (an `ack`'s): if its event never comes, the gap is fetched. */
  expect(seq) {
    if (Number.isInteger(seq) && seq > this.expected) this.expected = seq;
  }

  /**
   * The room's first `joined` (without sinceSeq): the caller holds the room as of `seq` (the
   * history page), and the page's messages above it. Returns the buffered events to give now.
   */
  start(seq, historySeqs) {
    this.synced = Number.isInteger(seq) ? seq : 0;
    for (const s of historySeqs) if (Number.isInteger(s) && s > this.synced) this.held.add(s);
    for (const s of [...this.buffer.keys()]) if (this.has(s)) this.buffer.delete(s);
    return this.drain();
  }

  /**
   * Gives what can be given: every buffered event up to `coveredTo` (a page showed that nothing
   * else is there), then each next seq while it is here. Returns the events, in seq order.
   */
  drain(coveredTo = null) {
    const out = [];
    if (this.synced === null) return out;
    if (Number.isInteger(coveredTo) && coveredTo > this.synced) {
      const seqs = [...this.buffer.keys()].filter((s) => s <= coveredTo).sort((a, b) => a - b);
      for (const s of seqs) {
        out.push(this.buffer.get(s));
        this.buffer.delete(s);
      }
      this.synced = coveredTo;
      for (const h of [...this.held]) if (h <= coveredTo) this.held.delete(h);
    }
    for (;;) {
      const next = this.synced + 1;
      if (this.buffer.has(next)) {
        out.push(this.buffer.get(next));
        this.buffer.delete(next);
        this.synced = next;
      } else if (this.held.delete(next)) {
        this.synced = next;
      } else {
        break;
      }
    }
    return out;
  }

  /** Whether an event below a known one is missing. */
  get gap() {
    return this.synced !== null && (this.buffer.size > 0 || this.expected > this.synced);
  }

  /** The highest seq known to exist. */
  get target() {
    let t = Math.max(this.expected, this.synced ?? 0);
    for (const s of this.buffer.keys()) if (s > t) t = s;
    return t;
  }

  /** Gives up waiting for what is missing (after fetching it failed to find it, repeatedly). */
  skip() {
    this.expected = 0;
    if (!this.buffer.size) return [];
    return this.drain(Math.max(...this.buffer.keys()));
  }
}
