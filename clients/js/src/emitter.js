// A small event emitter (no dependency on Node's events module, so it runs in browsers too).

export class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
  }

  /** Calls `handler` for every event of `type`; returns a function that removes it. */
  on(type, handler) {
    if (typeof handler !== 'function') throw new TypeError('handler must be a function');
    let set = this._handlers.get(type);
    if (!set) this._handlers.set(type, (set = new Set()));
    set.add(handler);
    return () => this.off(type, handler);
  }

  off(type, handler) {
    const set = this._handlers.get(type);
    if (set) set.delete(handler);
  }

  /** Calls `handler` for the next event of `type` only. */
  once(type, handler) {
    const off = this.on(type, (ev) => {
      off();
      handler(ev);
    });
    return off;
  }

  /**
   * A handler that throws does not break the client's state: the exception is rethrown on its
   * own (an uncaught exception, reported as the platform reports them).
   */
  emit(type, ev) {
    const set = this._handlers.get(type);
    if (!set || set.size === 0) return;
    for (const h of [...set]) {
      try {
        h(ev);
      } catch (e) {
        setTimeout(() => { throw e; }, 0);
      }
    }
  }
}
