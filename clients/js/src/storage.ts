// Where a device keeps what must survive a reconnect (and, with a persistent storage, a
// restart): the last processed `useq` and the outbox of sends not yet acked.

export interface Storage {
  get(key: "useq"): Promise<number | undefined>;
  set(key: "useq", value: number): Promise<void>;
  addToOutbox(cid: string, payload: Record<string, unknown>): Promise<void>;
  removeFromOutbox(cid: string): Promise<void>;
  /** Unacked sends, oldest first. */
  outbox(): Promise<Array<[string, Record<string, unknown>]>>;
}

/** Kept in memory: survives reconnects, not restarts (the default, and Node's). */
export class MemoryStorage implements Storage {
  private useq?: number;
  private readonly pending = new Map<string, Record<string, unknown>>();

  async get(): Promise<number | undefined> {
    return this.useq;
  }

  async set(_key: "useq", value: number): Promise<void> {
    this.useq = value;
  }

  async addToOutbox(cid: string, payload: Record<string, unknown>): Promise<void> {
    this.pending.set(cid, payload);
  }

  async removeFromOutbox(cid: string): Promise<void> {
    this.pending.delete(cid);
  }

  async outbox(): Promise<Array<[string, Record<string, unknown>]>> {
    return [...this.pending.entries()];
  }
}
