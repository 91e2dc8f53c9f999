// The chatd client: one device of one user, over MQTT (MQTT.js), doing what topics.md asks
// of a device so the app does not have to:
//
// - connects with a token from `getToken`, and reconnects with backoff, fetching a fresh
//   token each time and before the current one expires (MQTT.js alone would retry with the
//   stale one and give up);
// - `send` gives each message a `cid`, keeps it in the outbox until its `ack`, and sends it
//   again after a reconnect with the same `cid`, so the server stores it once;
// - incoming messages are handed over in `useq` order, once each: on connect and on any gap
//   it runs `sync` until caught up, and the last processed `useq` is kept in `storage`.

import mqtt, { type MqttClient } from "mqtt";

import { decodeOp, encodeOp } from "./compact.js";
import { ChatError } from "./errors.js";
import { MemoryStorage, type Storage } from "./storage.js";

/** A message to send (the `send` op of topics.md without `op` and `cid`). */
export interface Outgoing {
  to: string;
  chat?: "user" | "group" | "room";
  type?: "txt" | "img" | "audio" | "video" | "file" | "loc" | "cmd" | "custom";
  body: Record<string, unknown>;
  ext?: Record<string, unknown>;
}

/** The server's `ack`: the message is stored. */
export interface Ack {
  op: "ack";
  cid: string;
  id: string;
  conv: string;
  seq: number;
  ts: number;
  useq?: number;
}

/** A `msg`, or any other server op (`event`, `receipt`, `recalled`, …). */
export type Incoming = Record<string, unknown> & { op: string };

export interface ClientOptions {
  /** `ws://host:port/mqtt` (browsers) or `mqtt://host:port` (Node). */
  url: string;
  org: string;
  app: string;
  username: string;
  /** A fresh user token each time it is called (from your backend, or `POST /token`). */
  getToken: () => Promise<string>;
  /** The device id: kept across restarts by the app (default: random for this process). */
  deviceId?: string;
  /** Where the outbox and the last processed `useq` are kept (default: memory). */
  storage?: Storage;
  /** The longest wait between reconnection attempts (ms; default 30 s). */
  maxBackoffMs?: number;
  /** Messages per `sync` page (default 100). */
  syncLimit?: number;
  /** How long a `sync` page may take before it is asked for again (ms; default 10 s). */
  syncTimeoutMs?: number;
  /** The REST API's base (`https://chat.example.com`), for history, files and the rest. */
  apiUrl?: string;
  /** `compact`: MessagePack on the wire (topics.md), about a third of JSON's bytes. */
  encoding?: "json" | "compact";
}

type Listener = (message: Incoming) => void;

/** `online` once connected and caught up; `offline` from when the connection goes until then. */
export type Status = "online" | "offline";

interface Request {
  answers: (message: Incoming) => boolean;
  resolve: (message: Incoming) => void;
  reject: (error: ChatError) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface Pending {
  payload: Record<string, unknown>;
  resolve: (ack: Ack) => void;
  reject: (error: ChatError) => void;
}

/** One device of one user. */
export class ChatClient {
  readonly deviceId: string;
  private readonly opts: ClientOptions;
  private readonly storage: Storage;
  private mqtt?: MqttClient;
  private readonly listeners = new Set<Listener>();
  private readonly statusListeners = new Set<(status: Status) => void>();
  private currentStatus: Status = "offline";
  private readonly pending = new Map<string, Pending>();
  private readonly syncs = new Map<string, (page: Incoming) => void>();
  /** Ops waiting for their answer: by `cid`, with what else answers them. */
  private readonly requests = new Map<string, Request>();
  /** Topics besides the inbox this device holds (chatrooms, presence), renewed on reconnect. */
  private readonly extraTopics = new Set<string>();
  private lastUseq = 0;
  private syncing?: Promise<void>;
  /** Inbox messages and acks are processed one after another, in arrival order. */
  private processing: Promise<void> = Promise.resolve();
  private stopped = false;
  private attempt = 0;
  private refreshTimer?: ReturnType<typeof setTimeout>;
  private nextCid = 0;
  /** The token of the current connection, for REST calls. */
  private token?: string;
  /** Resolves when the first connection (and its catch-up) is done. */
  private connected?: Promise<void>;

  constructor(opts: ClientOptions) {
    this.opts = opts;
    this.storage = opts.storage ?? new MemoryStorage();
    this.deviceId = opts.deviceId ?? `js-${Math.random().toString(36).slice(2, 12)}`;
  }

  private topic(kind: "in" | "out"): string {
    return `chat/${this.opts.org}/${this.opts.app}/u/${this.opts.username.toLowerCase()}/${kind}`;
  }

  /** Every incoming message and event, in `useq` order for inbox messages, once each. */
  on(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Connection changes: `online` after each (re)connection's catch-up, `offline` when it goes. */
  onStatus(listener: (status: Status) => void): () => void {
    this.statusListeners.add(listener);
    return () => this.statusListeners.delete(listener);
  }

  /** `online` while connected and caught up. */
  get status(): Status {
    return this.currentStatus;
  }

  private setStatus(status: Status): void {
    if (status === this.currentStatus) return;
    this.currentStatus = status;
    for (const listener of this.statusListeners) listener(status);
  }

  /** The `useq` of the last inbox message handed over. */
  get position(): number {
    return this.lastUseq;
  }

  /** Connects, catches up, and keeps the connection until `close`. */
  async connect(): Promise<void> {
    this.stopped = false;
    this.lastUseq = (await this.storage.get("useq")) ?? 0;
    for (const [cid, payload] of await this.storage.outbox()) {
      if (!this.pending.has(cid)) {
        // Sent before a restart: sent again (same cid, stored once), nobody awaits it.
        this.pending.set(cid, { payload, resolve: () => {}, reject: () => {} });
      }
    }
    this.connected = this.open();
    return this.connected;
  }

  /** Disconnects for good (pending sends stay in the outbox for the next `connect`). */
  async close(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.refreshTimer);
    const client = this.mqtt;
    this.mqtt = undefined;
    this.setStatus("offline");
    if (client) await client.endAsync(true);
  }

  /** Sends a message; resolves with its `ack` once stored, rejects with a `ChatError`. */
  async send(message: Outgoing): Promise<Ack> {
    const cid = `${this.deviceId}-${Date.now().toString(36)}-${(this.nextCid++).toString(36)}`;
    const payload = { op: "send", cid, chat: "user", type: "txt", ...message };
    await this.storage.addToOutbox(cid, payload);
    return new Promise<Ack>((resolve, reject) => {
      this.pending.set(cid, { payload, resolve, reject });
      this.publish(payload);
    });
  }

  /** Sends any other client op as it is, without waiting. */
  op(payload: Record<string, unknown>): void {
    this.publish(payload);
  }

  /** Everything in a conversation up to `seq` is read (implies delivered). */
  read(conv: string, seq: number): void {
    this.publish({ op: "read", conv, seq });
  }

  /** Everything in a conversation up to `seq` reached this user. */
  delivered(conv: string, seq: number): void {
    this.publish({ op: "delivered", conv, seq });
  }

  /** "Typing…" to a peer or a group (the server keeps at most one every 2 s). */
  typing(to: string, chat: "user" | "group" = "user"): void {
    this.publish({ op: "typing", chat, to });
  }

  /** Recalls one's own message; resolves with the `recalled` event everyone gets. */
  recall(id: string): Promise<Incoming> {
    return this.request({ op: "recall", id }, (m) => m.op === "recalled" && m.id === id && this.byMe(m));
  }

  /** Edits one's own message; resolves with the `edited` event. */
  edit(id: string, body: Record<string, unknown>): Promise<Incoming> {
    return this.request({ op: "edit", id, body }, (m) => m.op === "edited" && m.id === id && this.byMe(m));
  }

  /** Deletes a message for this user only; resolves with the `deleted` event. */
  deleteForMe(id: string): Promise<Incoming> {
    return this.request({ op: "delete", id }, (m) => m.op === "deleted" && m.id === id);
  }

  /** Adds (or removes) a reaction; resolves with the `reaction` event. */
  react(id: string, emoji: string, add = true): Promise<Incoming> {
    const action = add ? "add" : "remove";
    return this.request(
      { op: "react", id, emoji, action },
      (m) => m.op === "reaction" && m.id === id && m.emoji === emoji && m.action === action && this.byMe(m),
    );
  }

  /** An event this user caused: someone else's recall, edit or reaction of the same message
   * (which reaches this device too) must not settle this user's own request for it. */
  private byMe(event: Incoming): boolean {
    return event.by === this.opts.username.toLowerCase();
  }

  /** Joins a chatroom and receives it (on this device, and after reconnects). */
  async join(room: string): Promise<void> {
    await this.request({ op: "join", room }, (m) => m.op === "joined" && m.room === room);
    const topic = `chat/${this.opts.org}/${this.opts.app}/room/${room}`;
    this.extraTopics.add(topic);
    await this.mqtt?.subscribeAsync(topic, { qos: 1 });
  }

  /** Leaves a chatroom. */
  async leave(room: string): Promise<void> {
    const topic = `chat/${this.opts.org}/${this.opts.app}/room/${room}`;
    this.extraTopics.delete(topic);
    await this.mqtt?.unsubscribeAsync(topic);
    await this.request({ op: "leave", room }, (m) => m.op === "left" && m.room === room);
  }

  /** Follows a user's presence: `{op: "presence", user, status, devices, last_seen}` events. */
  async watchPresence(user: string): Promise<void> {
    const topic = `chat/${this.opts.org}/${this.opts.app}/presence/${user.toLowerCase()}`;
    this.extraTopics.add(topic);
    const granted = await this.mqtt?.subscribeAsync(topic, { qos: 1 });
    if (granted?.some((g) => g.qos >= 128)) {
      this.extraTopics.delete(topic);
      throw new ChatError("forbidden", `not allowed to follow ${user}'s presence`);
    }
  }

  /** Publishes an op with a fresh `cid`; settles with its answer or its `error`. */
  private request(payload: Record<string, unknown>, answers: (m: Incoming) => boolean, ms = 15_000): Promise<Incoming> {
    const cid = `${this.deviceId}-r${(this.nextCid++).toString(36)}`;
    return new Promise<Incoming>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.requests.delete(cid);
        reject(new ChatError("timeout", `no answer to ${String(payload.op)} within ${ms} ms`, cid));
      }, ms);
      this.requests.set(cid, { answers, resolve, reject, timer });
      if (!this.mqtt?.connected) {
        clearTimeout(timer);
        this.requests.delete(cid);
        reject(new ChatError("offline", `not connected; ${String(payload.op)} was not sent`, cid));
        return;
      }
      this.publish({ ...payload, cid });
    });
  }

  /** Settles the request a message answers, if any. */
  private answered(message: Incoming): void {
    for (const [cid, request] of this.requests) {
      if (message.cid === cid || request.answers(message)) {
        clearTimeout(request.timer);
        this.requests.delete(cid);
        request.resolve(message);
        return;
      }
    }
  }

  /** A REST call as this user (`apiUrl`): the answer in the platform's envelope; an error
   * status as a `ChatError` with the platform's code. An expired token is refreshed once. */
  async rest(method: string, path: string, body?: unknown): Promise<any> {
    const base = this.opts.apiUrl;
    if (!base) throw new ChatError("invalid", "set apiUrl to call the REST API");
    for (let attempt = 0; ; attempt++) {
      if (!this.token || attempt > 0) this.token = await this.opts.getToken();
      const form = typeof FormData !== "undefined" && body instanceof FormData;
      const resp = await fetch(`${base.replace(/\/$/, "")}/${this.opts.org}/${this.opts.app}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${this.token}`,
          ...(body === undefined || form ? {} : { "content-type": "application/json" }),
        },
        body: body === undefined ? undefined : form ? (body as FormData) : JSON.stringify(body),
      });
      const answer = await resp.json().catch(() => ({}));
      if (resp.status === 401 && attempt === 0) continue;
      if (!resp.ok) {
        throw new ChatError(String(answer.error ?? resp.status), String(answer.error_description ?? resp.statusText));
      }
      return answer;
    }
  }

  /** A GET of a URL the server gave (a file, a thumbnail) with this user's token. */
  async fetchWithToken(url: string): Promise<Blob> {
    for (let attempt = 0; ; attempt++) {
      if (!this.token || attempt > 0) this.token = await this.opts.getToken();
      const resp = await fetch(url, { headers: { authorization: `Bearer ${this.token}` } });
      if (resp.status === 401 && attempt === 0) continue;
      if (!resp.ok) {
        const answer = await resp.json().catch(() => ({}));
        throw new ChatError(String(answer.error ?? resp.status), String(answer.error_description ?? resp.statusText));
      }
      return resp.blob();
    }
  }

  private publish(payload: Record<string, unknown>): void {
    const client = this.mqtt;
    if (!client?.connected) return; // sent on (re)connect from the outbox
    client.publish(this.topic("out"), this.serialise(payload), { qos: 1 });
  }

  /** An op as the connection's encoding wants it (MQTT.js takes a Buffer where there is one). */
  private serialise(payload: Record<string, unknown>): string | Buffer {
    if (this.opts.encoding !== "compact") return JSON.stringify(payload);
    const bytes = encodeOp(payload);
    const node = (globalThis as { Buffer?: typeof Buffer }).Buffer;
    return (node ? node.from(bytes) : bytes) as Buffer;
  }

  private backoff(): number {
    const max = this.opts.maxBackoffMs ?? 30_000;
    const base = Math.min(max, 250 * 2 ** Math.min(this.attempt, 10));
    return base / 2 + Math.random() * (base / 2);
  }

  /** One connection: connect with a fresh token, subscribe, resend the outbox, catch up. */
  private async open(): Promise<void> {
    while (!this.stopped) {
      try {
        const token = await this.opts.getToken();
        this.token = token;
        const client = await mqtt.connectAsync(this.opts.url, {
          protocolVersion: 5,
          clientId: this.deviceId,
          username: this.opts.username,
          password: token,
          clean: true,
          reconnectPeriod: 0,
          connectTimeout: 10_000,
          keepalive: 30,
          properties: this.opts.encoding === "compact" ? { userProperties: { enc: "compact" } } : undefined,
        });
        this.mqtt = client;
        this.attempt = 0;
        client.on("message", (topic, payload) => this.received(topic, payload));
        client.on("close", () => this.lost(client));
        client.on("error", () => {});
        this.scheduleRefresh(token, client);
        await client.subscribeAsync(this.topic("in"), { qos: 1 });
        for (const topic of this.extraTopics) await client.subscribeAsync(topic, { qos: 1 });
        for (const { payload } of this.pending.values()) this.publish(payload);
        await this.catchUp();
        if (this.mqtt === client && client.connected) this.setStatus("online");
        return;
      } catch (error) {
        if (this.stopped) return;
        this.attempt += 1;
        await sleep(this.backoff());
      }
    }
  }

  /** The connection went: reconnect (with backoff and a fresh token) unless closed. */
  private lost(client: MqttClient): void {
    if (this.mqtt !== client || this.stopped) return;
    this.mqtt = undefined;
    this.setStatus("offline");
    clearTimeout(this.refreshTimer);
    for (const resolve of this.syncs.values()) resolve({ op: "synced", lost: true });
    this.syncs.clear();
    this.attempt += 1;
    setTimeout(() => void this.open(), this.backoff());
  }

  /** Reconnects with a fresh token a minute before this one expires. */
  private scheduleRefresh(token: string, client: MqttClient): void {
    const exp = tokenExpiry(token);
    if (!exp) return;
    const wait = Math.max(1_000, exp * 1000 - Date.now() - 60_000);
    if (wait > 2 ** 31 - 1) return;
    this.refreshTimer = setTimeout(() => void client.endAsync(true), wait);
  }

  private received(topic: string, payload: Uint8Array): void {
    let message: Incoming;
    try {
      message = (
        this.opts.encoding === "compact" ? decodeOp(payload) : JSON.parse(new TextDecoder().decode(payload))
      ) as Incoming;
    } catch {
      return;
    }
    if (topic.includes("/presence/")) {
      this.emit({ ...message, op: "presence" });
      return;
    }
    if (topic !== this.topic("in")) {
      this.emit(message); // a chatroom: no useq
      return;
    }
    switch (message.op) {
      case "ack":
        this.inTurn(() => this.acked(message as unknown as Ack));
        return;
      case "error":
        this.refused(message);
        return;
      case "synced": {
        const waiting = this.syncs.get(String(message.cid));
        if (waiting) {
          this.syncs.delete(String(message.cid));
          waiting(message);
        }
        return;
      }
      case "msg":
        if (typeof message.useq === "number") {
          this.inTurn(() => this.inOrder(message));
          return;
        }
        this.emit(message);
        return;
      default:
        this.emit(message);
    }
  }

  private async acked(ack: Ack): Promise<void> {
    const waiting = this.pending.get(ack.cid);
    this.pending.delete(ack.cid);
    await this.storage.removeFromOutbox(ack.cid);
    // The sender's own message has a place in its inbox too: move past it.
    if (typeof ack.useq === "number" && ack.useq === this.lastUseq + 1) await this.advance(ack.useq);
    waiting?.resolve(ack);
  }

  private refused(error: Incoming): void {
    const cid = typeof error.cid === "string" ? error.cid : undefined;
    const chatError = new ChatError(String(error.code), String(error.message ?? ""), cid);
    const request = cid ? this.requests.get(cid) : undefined;
    if (cid && request) {
      clearTimeout(request.timer);
      this.requests.delete(cid);
      request.reject(chatError);
      return;
    }
    const waiting = cid ? this.pending.get(cid) : undefined;
    if (cid && waiting) {
      this.pending.delete(cid);
      void this.storage.removeFromOutbox(cid);
      waiting.reject(chatError);
      return;
    }
    this.emit(error);
  }

  private inTurn(work: () => Promise<void>): void {
    this.processing = this.processing.then(work).catch(() => {});
  }

  /** A live inbox message: handed over if next, dropped if seen, else a catch-up (which
   * fetches it too). A catch-up under way finishes first: the message may be past its
   * last page. */
  private async inOrder(message: Incoming): Promise<void> {
    if (this.syncing) await this.syncing;
    const useq = message.useq as number;
    if (useq <= this.lastUseq) return;
    if (useq === this.lastUseq + 1) {
      await this.advance(useq);
      this.emit(message);
      return;
    }
    await this.catchUp();
  }

  /** Runs `sync` until caught up (one at a time). */
  private async catchUp(): Promise<void> {
    if (this.syncing) return this.syncing;
    this.syncing = (async () => {
      try {
        for (;;) {
          const cid = `sync-${(this.nextCid++).toString(36)}`;
          // A page that never comes (its request lost on the way) is asked for again: a sync
          // changes nothing, so asking twice is harmless.
          const page = await new Promise<Incoming>((resolve) => {
            const timer = setTimeout(() => {
              this.syncs.delete(cid);
              resolve({ op: "synced", again: true });
            }, this.opts.syncTimeoutMs ?? 10_000);
            this.syncs.set(cid, (answer) => {
              clearTimeout(timer);
              resolve(answer);
            });
            this.publish({ op: "sync", cid, after: this.lastUseq, limit: this.opts.syncLimit ?? 100 });
            if (!this.mqtt?.connected) this.syncs.get(cid)?.({ op: "synced", lost: true });
          });
          if (page.lost) return;
          if (page.again) continue;
          for (const msg of (page.msgs as Incoming[]) ?? []) {
            const useq = msg.useq as number;
            if (useq <= this.lastUseq) continue;
            await this.advance(useq);
            if (!msg.hidden) this.emit(msg);
          }
          if (!page.more) return;
        }
      } finally {
        this.syncing = undefined;
      }
    })();
    return this.syncing;
  }

  private async advance(useq: number): Promise<void> {
    this.lastUseq = useq;
    await this.storage.set("useq", useq);
  }

  private emit(message: Incoming): void {
    this.answered(message);
    for (const listener of this.listeners) listener(message);
  }
}

/** A JWT's `exp` (seconds), if it has one. */
function tokenExpiry(token: string): number | undefined {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    return typeof json.exp === "number" ? json.exp : undefined;
  } catch {
    return undefined;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
