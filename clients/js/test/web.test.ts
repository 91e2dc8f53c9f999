// The web app (web/, served by chatd) in a real browser: Debian's Chromium driven by
// playwright-core. Each person is a browser context of their own (their own storage, so
// their own devices), signing up and in through the page as a person would.
//
// Screenshots of the run go to test-results/ (a person looks at them; they are not
// compared pixel by pixel). CHROMIUM names the browser (default /usr/bin/chromium); a
// missing browser fails the tests, it never skips them.

import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { after, before, test } from "node:test";
import { crc32, deflateSync } from "node:zlib";

import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";

import { Chatd } from "./harness.js";

const chatd = new Chatd({ web: true });
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const shots = new URL("../../test-results/", import.meta.url).pathname;
let browser: Browser;

before(async () => {
  assert.ok(existsSync(executablePath), `no Chromium at ${executablePath} (scripts/test.sh installs Debian's chromium)`);
  mkdirSync(shots, { recursive: true });
  await chatd.start();
  browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  await chatd.dispose();
});

/** Names unique to one test (the tests share one chatd). */
function names(...people: string[]): string[] {
  const tag = Math.random().toString(36).slice(2, 7);
  return people.map((p) => `${p}${tag}`);
}

async function newPerson(): Promise<BrowserContext> {
  return browser.newContext({ viewport: { width: 1100, height: 720 } });
}

/** What each page logged as an error (uncaught exceptions, console errors). */
const pageErrors = new WeakMap<Page, string[]>();

/** A new tab of `context` on the app. */
async function openApp(context: BrowserContext): Promise<Page> {
  const page = await context.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  pageErrors.set(page, errors);
  await page.goto(chatd.webUrl);
  return page;
}

/** Alice and Bob (names unique to the test), each signed up in a browser of their own. */
async function aliceAndBob() {
  const [alice, bob] = names("alice", "bob");
  const a = await newPerson();
  const b = await newPerson();
  const pa = await signIn(a, alice, true);
  const pb = await signIn(b, bob, true);
  return { alice, bob, a, b, pa, pb };
}

/** Opens the app in `context` and signs up (`register`) or in as `username`. */
async function signIn(context: BrowserContext, username: string, register: boolean): Promise<Page> {
  const page = await openApp(context);
  await page.getByLabel("Username", { exact: true }).fill(username);
  await page.getByLabel("Password", { exact: true }).fill(`${username}-password`);
  await page.getByRole("button", { name: register ? "Create an account" : "Sign in" }).click();
  await page.locator("#chat").waitFor({ state: "visible" });
  await online(page);
  return page;
}

/** Connected and caught up: the offline banner is gone. */
async function online(page: Page): Promise<void> {
  await page.locator("#offline").waitFor({ state: "hidden" });
}

function conversation(page: Page, title: string) {
  return page.locator("#conversations button").filter({ has: page.locator(".name", { hasText: title }) });
}

async function unread(page: Page, title: string): Promise<string> {
  return (await conversation(page, title).locator(".badge").getAttribute("data-count")) ?? "";
}

async function chatWith(page: Page, peer: string): Promise<void> {
  await page.getByLabel("Start a chat with (username)").fill(peer);
  await page.getByRole("button", { name: "Chat", exact: true }).click();
  await page.locator("#conv-title", { hasText: peer }).waitFor();
}

async function send(page: Page, text: string): Promise<void> {
  await page.getByLabel("Message", { exact: true }).fill(text);
  await page.getByLabel("Message", { exact: true }).press("Enter");
}

/** The texts of the open conversation, in the order shown. */
async function texts(page: Page): Promise<string[]> {
  return page.locator("#message-list .bubble").allTextContents();
}

async function eventually<T>(what: string, probe: () => Promise<T>, ok: (value: T) => boolean, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  let last: T = await probe();
  while (!ok(last)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; last seen: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
    last = await probe();
  }
  return last;
}

function noErrors(...pages: Page[]): void {
  for (const page of pages) assert.deepEqual(pageErrors.get(page), []);
}

/** As [`noErrors`], but the browser's own reports of a WebSocket that could not connect, or
 * that closed under a write (the server was away on purpose), are expected. */
function noErrorsButReconnects(...pages: Page[]): void {
  const expected = [/^WebSocket connection to .* failed/, /^WebSocket is already in CLOSING or CLOSED state\.$/];
  for (const page of pages) {
    const errors = (pageErrors.get(page) ?? []).filter((e) => !expected.some((re) => re.test(e)));
    assert.deepEqual(errors, []);
  }
}

test("two people chat: unread counts, typing, read ticks", async () => {
  const { alice, bob, a, b, pa, pb } = await aliceAndBob();

  await chatWith(pa, bob);
  await send(pa, "hello bob");
  const mine = pa.locator("#message-list .message.mine");
  await eventually("alice's message stored", () => mine.last().getAttribute("data-state"), (s) => s !== "sending");

  // Bob has not opened it: one unread, with a preview and alice shown online.
  await eventually("bob's unread count", () => unread(pb, alice), (n) => n === "1");
  assert.match(await conversation(pb, alice).locator(".preview").innerText(), /hello bob/);
  assert.equal(await conversation(pb, alice).locator(".avatar").getAttribute("data-presence"), "online");
  await eventually("delivered tick", () => mine.last().getAttribute("data-state"), (s) => s === "delivered");

  // Bob opens it: his count clears and alice sees the read tick.
  await conversation(pb, alice).click();
  await eventually("bob's count cleared", () => unread(pb, alice), (n) => n === "0");
  await eventually("read tick", () => mine.last().getAttribute("data-state"), (s) => s === "read");
  assert.equal(await mine.last().locator(".ticks").getAttribute("aria-label"), "Read");

  // Bob types: alice sees it; his message replaces it.
  await pb.getByLabel("Message", { exact: true }).pressSequentially("hi al", { delay: 30 });
  await pa.locator("#typing", { hasText: `${bob} is typing…` }).waitFor();
  await pa.screenshot({ path: `${shots}typing.png` });
  await pb.getByLabel("Message", { exact: true }).pressSequentially("ice");
  await pb.getByLabel("Message", { exact: true }).press("Enter");
  await eventually("bob's reply at alice", () => texts(pa), (t) => t.join("|") === "hello bob|hi alice");
  await eventually("typing cleared", () => pa.locator("#typing").innerText(), (t) => t === "");
  await pa.screenshot({ path: `${shots}chat.png` });
  noErrors(pa, pb);
  await a.close();
  await b.close();
});

test("someone offline comes back to every message, once and in order", async () => {
  const people = await aliceAndBob();
  const { alice, bob, a, pa } = people;
  let { b, pb } = people;
  await chatWith(pa, bob);
  await send(pa, "before");
  await eventually("bob got it", () => unread(pb, alice), (n) => n === "1");

  // Bob's browser goes away; alice writes three more.
  await b.close();
  await eventually("alice sees bob offline", () => pa.locator("#conv-status").innerText(), (t) => t === "offline");
  for (const text of ["one", "two", "three"]) await send(pa, text);
  await eventually(
    "all stored",
    () => pa.locator('#message-list .message.mine[data-state="sending"]').count(),
    (n) => n === 0,
  );

  // He comes back (a new browser: signs in with his password).
  b = await newPerson();
  pb = await signIn(b, bob, false);
  await eventually("four unread", () => unread(pb, alice), (n) => n === "4");
  await conversation(pb, alice).click();
  await eventually("all four, in order, once", () => texts(pb), (t) => t.join("|") === "before|one|two|three");
  await eventually("read at alice", () => pa.locator("#message-list .message.mine").last().getAttribute("data-state"), (s) => s === "read");
  noErrors(pa, pb);
  await a.close();
  await b.close();
});

test("two tabs of one user are two devices that stay in sync", async () => {
  const { alice, bob, a, b, pa: first, pb } = await aliceAndBob();
  // A second tab of the same browser: already signed in, a device of its own.
  const second = await openApp(a);
  await online(second);

  await chatWith(pb, alice);
  await send(pb, "to both tabs");
  await eventually("first tab's count", () => unread(first, bob), (n) => n === "1");
  await eventually("second tab's count", () => unread(second, bob), (n) => n === "1");

  // Read in one tab: the other's count clears too.
  await conversation(first, bob).click();
  await eventually("second tab cleared", () => unread(second, bob), (n) => n === "0");

  // Sent from one tab: shown in the other.
  await send(first, "from tab one");
  await conversation(second, bob).click();
  await eventually("second tab shows it", () => texts(second), (t) => t.includes("from tab one"));
  await eventually("bob got it", () => texts(pb), (t) => t.join("|") === "to both tabs|from tab one");
  noErrors(first, second, pb);
  await a.close();
  await b.close();
});

test("a group of three", async () => {
  const [alice, bob, carol] = names("alice", "bob", "carol");
  const people = await Promise.all([newPerson(), newPerson(), newPerson()]);
  const [pa, pb, pc] = [
    await signIn(people[0], alice, true),
    await signIn(people[1], bob, true),
    await signIn(people[2], carol, true),
  ];
  const group = `hikers ${alice.slice(-5)}`;
  await pa.getByRole("button", { name: "New group" }).click();
  await pa.getByLabel("Name", { exact: true }).fill(group);
  await pa.getByLabel("Members (usernames, separated by commas)").fill(`${bob}, ${carol}`);
  await pa.getByRole("button", { name: "Create" }).click();
  await pa.locator("#conv-title", { hasText: group }).waitFor();

  await pa.getByRole("button", { name: "Members" }).click();
  await eventually("three members", () => pa.locator("#members-list li").allInnerTexts(), (m) => m.length === 3);
  assert.match((await pa.locator("#members-list li").first().innerText()).replace(/\s+/g, " "), new RegExp(`${alice} owner`));
  await pa.getByRole("button", { name: "Close" }).click();

  await send(pa, "walk on sunday?");
  for (const page of [pb, pc]) {
    await eventually("the group's message", () => unread(page, group), (n) => n === "1");
    await conversation(page, group).click();
  }
  await send(pc, "yes!");
  for (const page of [pa, pb]) {
    await eventually("carol's reply", () => texts(page), (t) => t.join("|") === "walk on sunday?|yes!");
  }
  // Others' messages in a group name their sender.
  assert.equal(await pb.locator("#message-list .message.theirs .sender").last().innerText(), carol);
  await pb.screenshot({ path: `${shots}group.png` });
  noErrors(pa, pb, pc);
  await Promise.all(people.map((p) => p.close()));
});

test("an image is sent and shown as a thumbnail", async () => {
  const { alice, bob, a, b, pa, pb } = await aliceAndBob();
  await chatWith(pa, bob);
  await pa.locator("#file").setInputFiles({ name: "sunset.png", mimeType: "image/png", buffer: png(640, 480) });
  await eventually(
    "the image stored",
    () => pa.locator("#message-list .message.mine").last().getAttribute("data-state"),
    (s) => s === "delivered" || s === "stored" || s === "read",
  );

  await eventually("bob's preview", () => conversation(pb, alice).locator(".preview").innerText(), (t) => /Photo/.test(t));
  await conversation(pb, alice).click();
  const thumbnail = pb.locator("#message-list img.thumbnail");
  await thumbnail.waitFor();
  // The thumbnail, fetched with bob's token, decoded by the browser: at most 320 px a side.
  const size = await eventually(
    "the thumbnail decoded",
    () => thumbnail.evaluate((img: HTMLImageElement) => [img.naturalWidth, img.naturalHeight, img.src.slice(0, 5)]),
    ([w]) => (w as number) > 0,
  );
  assert.deepEqual(size, [320, 240, "blob:"]);
  assert.equal(await thumbnail.getAttribute("alt"), "Photo sunset.png");
  await pb.screenshot({ path: `${shots}image.png` });
  noErrors(pa, pb);
  await a.close();
  await b.close();
});

test("a chatroom: created by one, joined by another", async () => {
  const { alice, a, b, pa, pb } = await aliceAndBob();
  const room = `lobby ${alice.slice(-5)}`;
  await pa.getByRole("button", { name: "Chatrooms" }).click();
  await pa.getByLabel("New chatroom").fill(room);
  await pa.getByRole("button", { name: "Create" }).click();
  await pa.locator("#conv-title", { hasText: room }).waitFor();

  await pb.getByRole("button", { name: "Chatrooms" }).click();
  await pb.getByRole("button", { name: `Join ${room}` }).click();
  await pb.locator("#conv-title", { hasText: room }).waitFor();
  await send(pa, "welcome");
  await eventually("bob sees it", () => texts(pb), (t) => t.join("|") === "welcome");
  await send(pb, "thanks");
  await eventually("alice sees it once", () => texts(pa), (t) => t.join("|") === "welcome|thanks");
  noErrors(pa, pb);
  await a.close();
  await b.close();
});

test("history pages back, and a narrow screen shows one pane at a time", async () => {
  const [alice, bob] = names("alice", "bob");
  await chatd.users(alice, bob);
  // Forty messages from alice's backend, before bob ever opens the app.
  const app = await chatd.appToken();
  for (let i = 1; i <= 40; i++) {
    await chatd.rest("POST", "/messages/users", { from: alice, to: [bob], type: "txt", body: { msg: `m${i}` } }, app);
  }
  const phone = await browser.newContext({ viewport: { width: 390, height: 800 }, isMobile: true, hasTouch: true });
  const page = await openApp(phone);
  await page.getByLabel("Username", { exact: true }).fill(bob);
  await page.getByLabel("Password", { exact: true }).fill("pw");
  await page.getByRole("button", { name: "Sign in" }).click();
  await online(page);
  await eventually("forty unread", () => unread(page, alice), (n) => n === "40");
  // One pane at a time: the list, then the conversation with a way back.
  assert.equal(await page.locator(".conversation").isVisible(), false);
  await conversation(page, alice).click();
  assert.equal(await page.locator(".sidebar").isVisible(), false);
  const expected = Array.from({ length: 40 }, (_, i) => `m${i + 1}`);
  await eventually("the newest page", () => texts(page), (t) => t.join("|") === expected.slice(10).join("|"));
  await page.screenshot({ path: `${shots}phone.png` });
  await page.getByRole("button", { name: "Load older messages" }).click();
  await eventually("all forty, in order", () => texts(page), (t) => t.join("|") === expected.join("|"));
  assert.equal(await page.getByRole("button", { name: "Load older messages" }).isVisible(), false);
  await page.getByRole("button", { name: "Back to the conversation list" }).click();
  await eventually("read", () => unread(page, alice), (n) => n === "0");
  assert.equal(await page.locator(".sidebar").isVisible(), true);
  noErrors(page);
  await phone.close();
});

test("sign-up and sign-in errors are shown, and the page's own rules hold", async () => {
  const [alice] = names("alice");
  const context = await newPerson();
  const page = await context.newPage();
  const answer = await page.goto(chatd.webUrl);
  // Only the page's own scripts run; it cannot be framed.
  assert.match(answer!.headers()["content-security-policy"], /script-src 'self'/);
  assert.match(answer!.headers()["content-security-policy"], /frame-ancestors 'none'/);
  await page.getByLabel("Username", { exact: true }).fill(alice);
  await page.getByLabel("Password", { exact: true }).fill("short");
  await page.getByRole("button", { name: "Create an account" }).click();
  await page.locator("#login-error", { hasText: "at least 8 characters" }).waitFor();
  await page.getByLabel("Password", { exact: true }).fill("wrong-password");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#login-error", { hasText: /password/i }).waitFor();

  // A message is text, never markup: a script tag in a message stays a string.
  const pa = await signIn(context, alice, true);
  await chatWith(pa, alice);
  await send(pa, "<img src=x onerror=\"document.title='pwned'\">");
  await eventually("shown as text", () => texts(pa), (t) => t.includes("<img src=x onerror=\"document.title='pwned'\">"));
  assert.equal(await pa.locator("#message-list img").count(), 0);
  assert.notEqual(await pa.title(), "pwned");
  await context.close();
});

test("the offline banner shows while the server is away and clears once caught up", async () => {
  const { alice, bob, a, b, pa, pb } = await aliceAndBob();
  await chatWith(pa, bob);
  await send(pa, "before the restart");
  await eventually("bob got it", () => unread(pb, alice), (n) => n === "1");

  await chatd.stop();
  await pa.locator("#offline").waitFor({ state: "visible" });
  await pb.locator("#offline").waitFor({ state: "visible" });
  // Written while the server is away: it waits in the outbox (shown as sending).
  await send(pa, "while away");
  assert.equal(await pa.locator("#message-list .message.mine").last().getAttribute("data-state"), "sending");
  await chatd.start();
  await online(pa);
  await online(pb);
  await eventually("sent once back", () => pa.locator("#message-list .message.mine").last().getAttribute("data-state"), (s) => s !== "sending");
  await eventually("bob's count", () => unread(pb, alice), (n) => n === "2");
  await conversation(pb, alice).click();
  await eventually("both, once", () => texts(pb), (t) => t.join("|") === "before the restart|while away");
  noErrorsButReconnects(pa, pb);
  await a.close();
  await b.close();
});

/** A `width` × `height` RGB PNG (a gradient), written by hand: no image library needed. */
function png(width: number, height: number): Buffer {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1);
    for (let x = 0; x < width; x++) {
      raw[row + 1 + x * 3] = (x * 255) / width;
      raw[row + 2 + x * 3] = (y * 255) / height;
      raw[row + 3 + x * 3] = 160;
    }
  }
  const chunk = (type: string, data: Buffer) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}
