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

/** Kept in IndexedDB (browsers): the outbox and the position survive a page reload, so a
 * message sent just before a reload is sent again after it, with the same `cid`, and
 * stored once. One database per user and device. */
export class IndexedDbStorage implements Storage {
  private readonly db: Promise<IDBDatabase>;

  constructor(name: string, factory: IDBFactory = globalThis.indexedDB) {
    this.db = new Promise((resolve, reject) => {
      const open = factory.open(`chatd-${name}`, 1);
      open.onupgradeneeded = () => {
        open.result.createObjectStore("state");
        open.result.createObjectStore("outbox", { keyPath: "cid" });
      };
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
    });
  }

  private async run<T>(store: string, mode: IDBTransactionMode, work: (s: IDBObjectStore) => IDBRequest<T>): Promise<T> {
    const db = await this.db;
    return new Promise<T>((resolve, reject) => {
      const tx = db.transaction(store, mode);
      const request = work(tx.objectStore(store));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = () => reject(tx.error);
    });
  }

  async get(): Promise<number | undefined> {
    return this.run("state", "readonly", (s) => s.get("useq"));
  }

  async set(_key: "useq", value: number): Promise<void> {
    await this.run("state", "readwrite", (s) => s.put(value, "useq"));
  }

  async addToOutbox(cid: string, payload: Record<string, unknown>): Promise<void> {
    await this.run("outbox", "readwrite", (s) => s.put({ cid, payload, at: Date.now() }));
  }

  async removeFromOutbox(cid: string): Promise<void> {
    await this.run("outbox", "readwrite", (s) => s.delete(cid));
  }

  async outbox(): Promise<Array<[string, Record<string, unknown>]>> {
    const rows = await this.run<Array<{ cid: string; payload: Record<string, unknown>; at: number }>>(
      "outbox",
      "readonly",
      (s) => s.getAll(),
    );
    return rows.sort((a, b) => a.at - b.at).map((row) => [row.cid, row.payload]);
  }
}

/** A device id kept across page reloads (localStorage), or a new one where there is none. */
export function persistentDeviceId(key = "chatd-device-id"): string {
  const store = (globalThis as { localStorage?: { getItem(k: string): string | null; setItem(k: string, v: string): void } })
    .localStorage;
  const existing = store?.getItem(key);
  if (existing) return existing;
  const id = `web-${Math.random().toString(36).slice(2, 12)}`;
  store?.setItem(key, id);
  return id;
}
