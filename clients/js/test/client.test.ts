// The client against a real chatd: sends acked once, typed errors, messages in order and
// once, catching up after being offline, and a server restart in the middle of a stream
// (nothing lost, nothing twice, order kept, a fresh token for the reconnection).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import "fake-indexeddb/auto";

import {
  addMembers,
  bindPush,
  ChatClient,
  ChatError,
  conversations,
  createGroup,
  fetchFile,
  groupMembers,
  history,
  joinedGroups,
  type Incoming,
  IndexedDbStorage,
  upload,
} from "../src/index.js";
import { Chatd } from "./harness.js";

const chatd = new Chatd();

before(async () => {
  await chatd.start();
  const app = await chatd.appToken();
  await chatd.rest("PUT", "/settings", { send_rate_per_sec: 1e6, send_burst: 1e6 }, app);
  await chatd.users("alice", "bob", "carol", "dave");
});

after(async () => {
  await chatd.dispose();
});

function client(username: string, deviceId?: string) {
  const tokens = chatd.tokens(username);
  const c = new ChatClient({
    url: chatd.mqttUrl,
    apiUrl: chatd.api,
    org: "demo",
    app: "chat",
    username,
    getToken: tokens.getToken,
    deviceId,
    maxBackoffMs: 500,
  });
  return { c, tokens };
}

/** Collects a client's messages of type `msg`. */
function inbox(c: ChatClient): Incoming[] {
  const got: Incoming[] = [];
  c.on((m) => {
    if (m.op === "msg") got.push(m);
  });
  return got;
}

async function until(what: string, ok: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("a message is acked once stored, delivered once, and refusals are typed", async () => {
  const { c: alice } = client("alice");
  const { c: bob } = client("bob");
  const got = inbox(bob);
  await alice.connect();
  await bob.connect();
  const ack = await alice.send({ to: "bob", body: { msg: "hello" } });
  assert.equal(ack.op, "ack");
  assert.ok(ack.id && ack.seq >= 1, JSON.stringify(ack));
  await until("bob's message", () => got.length === 1);
  assert.equal(got[0].from, "alice");
  assert.deepEqual(got[0].body, { msg: "hello" });
  await assert.rejects(alice.send({ to: "nobody", body: { msg: "?" } }), (e: unknown) => {
    assert.ok(e instanceof ChatError);
    assert.equal(e.code, "unknown_recipient");
    return true;
  });
  await assert.rejects(alice.send({ to: "bob", body: {} }), (e: unknown) => e instanceof ChatError && e.code === "invalid");
  await alice.close();
  await bob.close();
});

test("a device that was offline catches up, in order, once", async () => {
  const { c: alice } = client("alice", "alice-phone");
  await alice.connect();
  const { c: carol } = client("carol", "carol-phone");
  const got = inbox(carol);
  await carol.connect();
  await carol.close();
  for (const text of ["one", "two", "three"]) await alice.send({ to: "carol", body: { msg: text } });
  await carol.connect();
  await until("three messages", () => got.length >= 3);
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(
    got.map((m) => (m.body as { msg: string }).msg),
    ["one", "two", "three"],
  );
  const useqs = got.map((m) => m.useq as number);
  assert.deepEqual(useqs, [...useqs].sort((a, b) => a - b));
  await alice.close();
  await carol.close();
});

test("a server restart in the middle of a stream loses nothing and repeats nothing", async () => {
  const { c: alice, tokens } = client("alice", "alice-laptop");
  const { c: dave } = client("dave", "dave-phone");
  const got = inbox(dave);
  const statuses: string[] = [];
  dave.onStatus((s) => statuses.push(s));
  await alice.connect();
  await dave.connect();
  assert.equal(dave.status, "online");
  const sent: Promise<unknown>[] = [];
  for (let i = 0; i < 40; i++) {
    sent.push(alice.send({ to: "dave", body: { msg: `m${i}` } }));
    if (i === 15) {
      await chatd.stop();
      const restarted = chatd.start();
      // Sends made while the server is down wait in the outbox.
      for (let j = 0; j < 5; j++) sent.push(alice.send({ to: "dave", body: { msg: `down${j}` } }));
      await restarted;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  await Promise.all(sent);
  await until("every message", () => got.length >= 45, 30_000);
  await new Promise((r) => setTimeout(r, 500));
  const texts = got.map((m) => (m.body as { msg: string }).msg);
  assert.equal(texts.length, 45, `delivered ${texts.length}: ${texts}`);
  assert.equal(new Set(texts).size, 45, "a message arrived twice");
  const useqs = got.map((m) => m.useq as number);
  assert.deepEqual(useqs, [...useqs].sort((a, b) => a - b), "out of order");
  for (let i = 1; i < useqs.length; i++) assert.equal(useqs[i], useqs[i - 1] + 1, "a gap in dave's inbox");
  assert.ok(tokens.calls() >= 2, "the reconnection did not fetch a fresh token");
  // The app saw the connection go and come back (online only once caught up).
  assert.deepEqual(statuses.slice(0, 3), ["online", "offline", "online"]);
  // The server stored each once: dave's inbox holds exactly these.
  const app = await chatd.appToken();
  const history = await chatd.rest("GET", "/users/dave/conversations/user/alice/messages?limit=100", undefined, app);
  assert.equal(history.count, 45);
  await alice.close();
  await dave.close();
});

test("receipts, typing, recall, edit, reactions, chatrooms and presence", async () => {
  const { c: alice } = client("alice", "alice-tablet");
  const { c: bob } = client("bob", "bob-tablet");
  const seen: Incoming[] = [];
  const bobSeen: Incoming[] = [];
  alice.on((m) => seen.push(m));
  bob.on((m) => bobSeen.push(m));
  await alice.connect();
  await alice.watchPresence("bob");
  await bob.connect();
  await until("bob online", () => seen.some((m) => m.op === "presence" && m.user === "bob" && m.status === "online"));

  const ack = await alice.send({ to: "bob", body: { msg: "teh plan" } });
  await until("the message", () => bobSeen.some((m) => m.op === "msg" && m.id === ack.id));
  bob.read(ack.conv, ack.seq);
  await until("a read receipt", () => seen.some((m) => m.op === "receipt" && m.type === "read" && m.by === "bob"));
  bob.typing("alice");
  await until("typing", () => seen.some((m) => m.op === "typing" && m.from === "bob"));

  const edited = await alice.edit(ack.id, { msg: "the plan" });
  assert.deepEqual(edited.body, { msg: "the plan" });
  const reaction = await bob.react(ack.id, "👍");
  assert.equal(reaction.by, "bob");
  const recalled = await alice.recall(ack.id);
  assert.equal(recalled.id, ack.id);
  await assert.rejects(bob.recall(ack.id), (e: unknown) => e instanceof ChatError && e.code === "forbidden");

  // A chatroom: join, receive, leave; an unknown one is refused.
  const app = await chatd.appToken();
  const room = (await chatd.rest("POST", "/chatrooms", { name: "lobby", owner: "alice", members: [] }, app)).data.id;
  await alice.join(room);
  await bob.join(room);
  await alice.send({ to: room, chat: "room", body: { msg: "welcome" } });
  await until("the room message", () => bobSeen.some((m) => m.op === "msg" && m.chat === "room" && m.to === room));
  await bob.leave(room);
  await assert.rejects(bob.join("no-such-room"), (e: unknown) => e instanceof ChatError && e.code === "not_found");

  await bob.close();
  await until("bob offline", () => seen.some((m) => m.op === "presence" && m.user === "bob" && m.status === "offline"));
  await alice.close();
});

test("the conversation list, history pages, groups, files and push binding over REST", async () => {
  const { c: alice } = client("alice", "alice-desk");
  await alice.connect();
  await chatd.users("erin");
  for (let i = 0; i < 5; i++) await alice.send({ to: "erin", body: { msg: `h${i}` } });
  const file = await upload(alice, new Blob(["the minutes"], { type: "text/plain" }), "minutes.txt");
  assert.equal(typeof file.url, "string");
  const ack = await alice.send({ to: "erin", type: "file", body: { url: file.url } });
  assert.ok(ack.seq >= 6);

  const { c: erin } = client("erin", "erin-phone");
  await erin.connect();
  const list = await conversations(erin, "erin");
  const withAlice = list.entities.find((c) => c.with === "alice");
  assert.ok(withAlice, JSON.stringify(list));
  assert.equal(withAlice.unread, 6);
  const page = await history(erin, "erin", "user", "alice", { fromSeq: 2, limit: 3 });
  assert.deepEqual(page.entities.map((m) => (m.body as { msg?: string }).msg), ["h1", "h2", "h3"]);
  assert.equal(page.last_seq, 6);
  erin.read(withAlice.conv, page.last_seq);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal((await conversations(erin, "erin")).total_unread, 0);
  await bindPush(erin, "erin", "tok-erin", "fcm");

  // Groups: created by erin, a member added, listed; refusals named per user.
  const group = await createGroup(erin, { name: "book club", members: ["alice"] });
  const added = await addMembers(erin, group, ["dave", "nobody-here"]);
  assert.deepEqual(added.added, ["dave"]);
  assert.deepEqual(added.failed.map((f) => f.user), ["nobody-here"]);
  assert.deepEqual(await groupMembers(erin, group), [
    { username: "erin", role: "owner" },
    { username: "alice", role: "member" },
    { username: "dave", role: "member" },
  ]);
  assert.deepEqual((await joinedGroups(alice, "alice")).map((g) => g.groupname), ["book club"]);
  await assert.rejects(addMembers(alice, group, ["carol"]), (e: unknown) => e instanceof ChatError && e.code === "forbidden_op");
  // A file the user may read, with their token; one they may not is a typed refusal.
  assert.equal(await (await fetchFile(erin, String(file.url))).text(), "the minutes");
  const { c: carol } = client("carol", "carol-phone");
  await carol.connect();
  await assert.rejects(fetchFile(carol, String(file.url)), (e: unknown) => e instanceof ChatError && e.code === "forbidden_op");
  await carol.close();
  await assert.rejects(erin.rest("GET", "/users/alice/conversations"), (e: unknown) => e instanceof ChatError && e.code === "forbidden_op");
  await alice.close();
  await erin.close();
});

test("a send made before a reload is sent after it, once (IndexedDB outbox)", async () => {
  await chatd.users("fay");
  const tokens = chatd.tokens("alice");
  const options = {
    url: chatd.mqttUrl,
    org: "demo",
    app: "chat",
    username: "alice",
    getToken: tokens.getToken,
    deviceId: "alice-browser",
    maxBackoffMs: 500,
  };
  // The page sends while the server is away, then is closed before any ack.
  const first = new ChatClient({ ...options, storage: new IndexedDbStorage("alice-browser") });
  await first.connect();
  await chatd.stop();
  const unacked = first.send({ to: "fay", body: { msg: "sent before the reload" } });
  unacked.catch(() => {});
  await first.close();
  await chatd.start();
  // The reloaded page: same storage, a new client; the outbox goes out with its cid.
  const second = new ChatClient({ ...options, storage: new IndexedDbStorage("alice-browser") });
  await second.connect();
  const { c: fay } = client("fay", "fay-phone");
  const got = inbox(fay);
  await fay.connect();
  await until("the message", () => got.length === 1);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(got.length, 1);
  assert.equal((got[0].body as { msg: string }).msg, "sent before the reload");
  const storage = new IndexedDbStorage("alice-browser");
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(await storage.outbox(), [], "the acked send stayed in the outbox");
  await second.close();
  await fay.close();
});

test("the compact encoding: the same objects, fewer bytes", async () => {
  const tokens = chatd.tokens("alice");
  const alice = new ChatClient({
    url: chatd.mqttUrl,
    org: "demo",
    app: "chat",
    username: "alice",
    getToken: tokens.getToken,
    deviceId: "alice-watch",
    encoding: "compact",
  });
  const { c: bob } = client("bob", "bob-watch");
  const bobCompact = new ChatClient({
    url: chatd.mqttUrl,
    org: "demo",
    app: "chat",
    username: "bob",
    getToken: chatd.tokens("bob").getToken,
    deviceId: "bob-compact",
    encoding: "compact",
  });
  const json = inbox(bob);
  const compact = inbox(bobCompact);
  await alice.connect();
  await bob.connect();
  await bobCompact.connect();
  const ack = await alice.send({ to: "bob", body: { msg: "short and sweet" }, ext: { k: 1 } });
  assert.match(ack.id, /^[0-9a-f]{8}-[0-9a-f]{4}-/);
  await until("both devices", () => json.some((m) => m.id === ack.id) && compact.some((m) => m.id === ack.id));
  const a = json.find((m) => m.id === ack.id)!;
  const b = compact.find((m) => m.id === ack.id)!;
  for (const key of ["id", "conv", "seq", "useq", "ts", "chat", "from", "to", "type", "body", "ext"]) {
    assert.deepEqual(b[key], a[key], key);
  }
  await assert.rejects(alice.send({ to: "nobody", body: { msg: "?" } }), (e: unknown) => e instanceof ChatError && e.code === "unknown_recipient");
  await alice.close();
  await bob.close();
  await bobCompact.close();
});
