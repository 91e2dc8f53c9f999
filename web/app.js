// chatd web app: a chat client on the chatd SDK (./chatd.js, bundled from clients/js).
//
// Everything it shows comes from the public contract: REST for sign-in, the conversation
// list, history, groups, chatrooms and files; MQTT (through the SDK) for messages,
// receipts, typing and presence. Each browser tab is a device of its own (its device id
// lives in sessionStorage, its outbox and sync position in IndexedDB), so several tabs of
// one user stay in sync the way several phones do. Message contents are only ever put in
// the page as text (textContent), never as HTML.

import {
  ChatClient,
  ChatError,
  IndexedDbStorage,
  addMembers,
  chatrooms,
  conversations,
  createChatroom,
  createGroup,
  fetchFile,
  groupMembers,
  history,
  joinedGroups,
  login,
  register,
  roomHistory,
  upload,
} from "./chatd.js";

const $ = (id) => document.getElementById(id);
const PAGE = 30;

/** Everything the page knows; the DOM is redrawn from it. */
const state = {
  cfg: null,
  me: "",
  password: "",
  client: null,
  /** conversation key (`u:a:b`, `g:id`, `r:id`) → entry */
  convs: new Map(),
  groups: new Map(),
  presence: new Map(),
  current: null,
  /** the open conversation's messages, oldest first */
  messages: [],
  firstSeq: 0,
  typing: new Map(),
  typingSentAt: 0,
  thumbs: new Map(),
};

// ---- Start: configuration, then the saved session or the sign-in form --------------------

async function start() {
  try {
    const resp = await fetch("config.json");
    state.cfg = await resp.json();
    if (!resp.ok) throw new Error(state.cfg.error ?? `config.json: ${resp.status}`);
  } catch (e) {
    document.body.textContent = `This chatd cannot serve its web app: ${e.message}`;
    return;
  }
  $("app-name").textContent = `${state.cfg.org}/${state.cfg.app}`;
  $("register").hidden = !state.cfg.registration;
  bindStaticHandlers();
  const saved = loadSession();
  if (saved) await enter(saved.username);
  else showLogin();
}

function apiUrl() {
  return location.origin;
}

function mqttUrl() {
  const { mqtt_url, ws_port, wss_port, mqtt_path } = state.cfg;
  if (mqtt_url) return mqtt_url;
  const secure = location.protocol === "https:";
  const port = secure ? wss_port : ws_port;
  if (!port) throw new Error(`this chatd has no MQTT over ${secure ? "wss (mqtt.wss)" : "WebSocket (mqtt.ws)"}`);
  return `${secure ? "wss" : "ws"}://${location.hostname}:${port}${mqtt_path}`;
}

// ---- Session: the token is shared by the tabs (localStorage); the device id is per tab ----

const sessionKey = () => `chatd-session:${state.cfg.org}/${state.cfg.app}`;

function loadSession() {
  try {
    const saved = JSON.parse(localStorage.getItem(sessionKey()) ?? "null");
    if (saved && saved.exp * 1000 > Date.now() + 60_000) return saved;
  } catch {}
  return null;
}

function saveSession(username, token, expiresIn) {
  const exp = expiresIn > 0 ? Math.floor(Date.now() / 1000) + expiresIn : 2 ** 31;
  localStorage.setItem(sessionKey(), JSON.stringify({ username, token, exp }));
}

function deviceId() {
  let id = sessionStorage.getItem("chatd-device");
  if (!id) {
    id = `web-${crypto.randomUUID().slice(0, 13)}`;
    sessionStorage.setItem("chatd-device", id);
  }
  return id;
}

/** The SDK asks for a token on each (re)connection: the saved one while it lasts, else a
 * new one with the password typed in this tab, else back to the sign-in form. */
async function getToken() {
  const saved = loadSession();
  if (saved && saved.username === state.me) return saved.token;
  if (state.password) {
    const answer = await login(apiUrl(), state.cfg.org, state.cfg.app, state.me, state.password);
    saveSession(state.me, answer.access_token, answer.expires_in);
    return answer.access_token;
  }
  setTimeout(() => void signOut("Your session has expired; sign in again."), 0);
  throw new ChatError("unauthorized", "session expired");
}

// ---- Sign-in and registration --------------------------------------------------------------

function showLogin(message = "") {
  $("chat").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("username").focus();
}

async function signIn(event, registering) {
  event?.preventDefault();
  const username = $("username").value.trim().toLowerCase();
  const password = $("password").value;
  if (!username || !password) {
    $("login-error").textContent = "Enter a username and a password.";
    return;
  }
  $("sign-in").disabled = $("register").disabled = true;
  try {
    if (registering) await register(apiUrl(), state.cfg.org, state.cfg.app, { username, password });
    const answer = await login(apiUrl(), state.cfg.org, state.cfg.app, username, password);
    saveSession(username, answer.access_token, answer.expires_in);
    state.password = password;
    $("password").value = "";
    await enter(username);
  } catch (e) {
    $("login-error").textContent = describe(e);
  } finally {
    $("sign-in").disabled = $("register").disabled = false;
  }
}

async function signOut(message = "") {
  const client = state.client;
  state.client = null;
  localStorage.removeItem(sessionKey());
  state.password = "";
  if (client) await client.close();
  state.convs.clear();
  state.current = null;
  state.messages = [];
  $("conversations").replaceChildren();
  showLogin(message);
}

/** Signed in: connect, then draw the conversation list. */
async function enter(username) {
  state.me = username;
  $("login").hidden = true;
  $("chat").hidden = false;
  $("me-name").textContent = username;
  $("me-avatar").textContent = initials(username);
  const id = deviceId();
  const client = new ChatClient({
    url: mqttUrl(),
    apiUrl: apiUrl(),
    org: state.cfg.org,
    app: state.cfg.app,
    username,
    getToken,
    deviceId: id,
    storage: new IndexedDbStorage(`${state.cfg.org}-${state.cfg.app}-${username}-${id}`),
  });
  state.client = client;
  client.on(incoming);
  client.onStatus((status) => {
    $("offline").hidden = status === "online";
    if (status === "online") void refresh();
  });
  $("offline").hidden = false;
  await client.connect();
}

// ---- Loading: conversation list, groups, rooms ------------------------------------------

/** After each (re)connection: what changed while offline (reads on other devices, new
 * groups, messages). */
async function refresh() {
  try {
    const groups = await joinedGroups(state.client, state.me);
    for (const g of groups) state.groups.set(g.groupid, g.groupname);
    const list = await conversations(state.client, state.me, 100);
    for (const entry of list.entities) {
      const key = entry.conv;
      const known = state.convs.get(key);
      state.convs.set(key, mergeListed(known, entry));
      if (entry.chat === "user") watch(entry.with);
    }
    const rooms = await state.client.rest("GET", `/users/${state.me}/joined_chatrooms`);
    for (const room of rooms.data ?? []) {
      const key = `r:${room.id}`;
      if (!state.convs.has(key)) state.convs.set(key, roomEntry(room.id, room.name));
      await state.client.join(room.id).catch(() => {});
    }
    renderList();
    if (state.current) await openConversation(state.current, { keepScroll: true });
  } catch (e) {
    $("sidebar-error").textContent = describe(e);
  }
}

/** A conversation as the server lists it, merged with what this tab already knows. The list
 * is a snapshot taken while live messages keep arriving: a message counted live may be in
 * the snapshot too, or may have arrived after it. Positions only move forward, and a tab
 * that has seen more than the snapshot keeps its own last message and count. */
function mergeListed(known, listed) {
  if (!known) return { ...listed, key: listed.conv };
  const merged = { ...known, ...listed, key: listed.conv };
  for (const field of ["read_seq", "peer_read_seq", "peer_delivered_seq"]) {
    merged[field] = Math.max(known[field] ?? 0, listed[field] ?? 0);
  }
  if ((known.last_seq ?? 0) > (listed.last_seq ?? 0)) {
    merged.last_seq = known.last_seq;
    merged.last_message = known.last_message;
    merged.updated = known.updated;
    merged.unread = known.unread;
  }
  if (merged.read_seq > (listed.read_seq ?? 0)) {
    merged.unread = Math.min(merged.unread ?? 0, Math.max(0, (merged.last_seq ?? 0) - merged.read_seq));
  }
  return merged;
}

function roomEntry(id, name) {
  return { key: `r:${id}`, conv: `r:${id}`, chat: "room", with: id, name, unread: 0, last_seq: 0, updated: 0 };
}

function userEntry(peer) {
  const key = userConv(state.me, peer);
  return { key, conv: key, chat: "user", with: peer, unread: 0, last_seq: 0, read_seq: 0, peer_read_seq: 0, peer_delivered_seq: 0, updated: Date.now() };
}

function userConv(a, b) {
  return a <= b ? `u:${a}:${b}` : `u:${b}:${a}`;
}

function watch(user) {
  if (state.presence.has(user) || user === state.me) return;
  state.presence.set(user, "offline");
  state.client.watchPresence(user).catch(() => {});
}

// ---- The conversation list ------------------------------------------------------------------

function titleOf(entry) {
  if (entry.chat === "group") return state.groups.get(entry.with) ?? "Group";
  if (entry.chat === "room") return entry.name ?? "Chatroom";
  return entry.with;
}

function renderList() {
  const entries = [...state.convs.values()].sort((a, b) => (b.updated ?? 0) - (a.updated ?? 0));
  const items = entries.map((entry) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.conv = entry.key;
    button.setAttribute("aria-current", String(entry.key === state.current));
    const avatar = document.createElement("span");
    avatar.className = `avatar ${entry.chat === "user" ? "" : entry.chat}`;
    avatar.textContent = initials(titleOf(entry));
    if (entry.chat === "user") avatar.dataset.presence = state.presence.get(entry.with) ?? "offline";
    avatar.setAttribute("aria-hidden", "true");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = titleOf(entry);
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = entry.last_message ? clock(entry.last_message.ts) : "";
    const preview = document.createElement("span");
    preview.className = "preview";
    preview.textContent = entry.last_message ? previewOf(entry.last_message) : entry.chat === "room" ? "Chatroom" : "";
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.count = String(entry.unread ?? 0);
    badge.textContent = String(entry.unread ?? 0);
    const online = entry.chat === "user" ? `, ${state.presence.get(entry.with) ?? "offline"}` : "";
    button.setAttribute("aria-label", `${titleOf(entry)}${online}, ${entry.unread ?? 0} unread`);
    button.append(avatar, name, when, preview, badge);
    button.addEventListener("click", () => void openConversation(entry.key));
    li.append(button);
    return li;
  });
  $("conversations").replaceChildren(...items);
}

function previewOf(message) {
  const who = message.from === state.me ? "You: " : message.chat === "group" ? `${message.from}: ` : "";
  return who + summary(message);
}

function summary(message) {
  if (message.recalled) return "message recalled";
  switch (message.type) {
    case "txt":
      return String(message.body?.msg ?? "");
    case "img":
      return "Photo";
    case "file":
      return `File: ${message.body?.filename ?? "file"}`;
    case "loc":
      return "Location";
    default:
      return `[${message.type}]`;
  }
}

// ---- One conversation ----------------------------------------------------------------------

async function openConversation(key, { keepScroll = false } = {}) {
  const entry = state.convs.get(key);
  if (!entry) return;
  const switching = state.current !== key;
  state.current = key;
  $("chat").dataset.view = "conversation";
  $("empty").hidden = true;
  $("composer").hidden = false;
  $("conv-title").textContent = titleOf(entry);
  $("members-button").hidden = entry.chat !== "group";
  $("typing").textContent = "";
  renderStatusLine();
  if (switching) {
    state.messages = [];
    renderMessages();
  }
  try {
    let page;
    if (entry.chat === "room") {
      page = { entities: await roomHistory(state.client, entry.with, 50), last_seq: 0 };
      state.firstSeq = 1;
    } else {
      const kind = entry.chat === "group" ? "group" : "user";
      let last = entry.last_seq ?? 0;
      if (!last) last = (await history(state.client, state.me, kind, entry.with, { limit: 1 })).last_seq;
      const fromSeq = Math.max(1, last - PAGE + 1);
      page = await history(state.client, state.me, kind, entry.with, { fromSeq, limit: PAGE });
      state.firstSeq = fromSeq;
      entry.last_seq = Math.max(entry.last_seq ?? 0, page.last_seq);
    }
    if (state.current !== key) return;
    const pending = state.messages.filter((m) => m.state === "sending" || m.state === "failed");
    state.messages = [];
    for (const m of page.entities) merge(m);
    for (const m of pending) state.messages.push(m);
    $("older").hidden = entry.chat === "room" || state.firstSeq <= 1;
    renderMessages({ scroll: !keepScroll || switching });
    markRead(entry);
    renderList();
    if (switching) $("text").focus();
  } catch (e) {
    $("composer-error").textContent = describe(e);
  }
}

async function loadOlder() {
  const entry = state.convs.get(state.current);
  if (!entry || state.firstSeq <= 1) return;
  const kind = entry.chat === "group" ? "group" : "user";
  const toSeq = state.firstSeq - 1;
  const fromSeq = Math.max(1, toSeq - PAGE + 1);
  const list = $("messages");
  const before = list.scrollHeight;
  const page = await history(state.client, state.me, kind, entry.with, { fromSeq, toSeq, limit: PAGE });
  state.firstSeq = fromSeq;
  for (const m of page.entities) merge(m);
  $("older").hidden = fromSeq <= 1;
  renderMessages({ scroll: false });
  list.scrollTop = list.scrollHeight - before;
}

/** Adds or updates a message of the open conversation, kept in `seq` order. */
function merge(message) {
  const at = state.messages.findIndex((m) => (message.id && m.id === message.id) || (message.cid && m.cid === message.cid));
  const shown = { ...message, state: message.state ?? "stored" };
  if (at >= 0) {
    state.messages[at] = { ...state.messages[at], ...shown };
    return;
  }
  state.messages.push(shown);
  state.messages.sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity) || (a.ts ?? 0) - (b.ts ?? 0));
}

function tickState(message, entry) {
  if (message.from !== state.me || message.state === "sending" || message.state === "failed") return message.state;
  if (entry?.chat !== "user") return "stored";
  if (message.seq <= (entry.peer_read_seq ?? 0)) return "read";
  if (message.seq <= (entry.peer_delivered_seq ?? 0)) return "delivered";
  return "stored";
}

const TICKS = { sending: "…", stored: "✓", delivered: "✓✓", read: "✓✓", failed: "!" };
const STATE_LABEL = { sending: "Sending", stored: "Sent", delivered: "Delivered", read: "Read", failed: "Not sent" };

function renderMessages({ scroll = true } = {}) {
  const entry = state.convs.get(state.current);
  const list = $("messages");
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  const items = state.messages.map((m) => {
    const li = document.createElement("li");
    const mine = m.from === state.me;
    const shownState = tickState(m, entry);
    li.className = `message ${mine ? "mine" : "theirs"}${m.recalled ? " recalled" : ""}`;
    li.dataset.state = shownState;
    if (m.id) li.dataset.id = m.id;
    if (m.seq) li.dataset.seq = String(m.seq);
    if (!mine && entry?.chat !== "user") {
      const sender = document.createElement("span");
      sender.className = "sender";
      sender.textContent = m.from;
      li.append(sender);
    }
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    if (m.recalled) bubble.textContent = "This message was recalled";
    else if (m.type === "img") bubble.append(image(m));
    else bubble.textContent = summary(m);
    const meta = document.createElement("span");
    meta.className = "meta";
    const time = document.createElement("time");
    time.textContent = clock(m.ts);
    meta.append(time);
    if (mine) {
      const ticks = document.createElement("span");
      ticks.className = "ticks";
      ticks.textContent = TICKS[shownState] ?? "";
      ticks.title = STATE_LABEL[shownState] ?? "";
      ticks.setAttribute("aria-label", STATE_LABEL[shownState] ?? "");
      meta.append(ticks);
    }
    if (mine && m.id && !m.recalled && entry?.chat !== "room") {
      const recall = document.createElement("button");
      recall.type = "button";
      recall.className = "ghost";
      recall.textContent = "Recall";
      recall.setAttribute("aria-label", "Recall this message");
      recall.addEventListener("click", () => void state.client.recall(m.id).catch(showComposerError));
      meta.append(recall);
    }
    li.append(bubble, meta);
    return li;
  });
  $("message-list").replaceChildren(...items);
  if (scroll || nearBottom) list.scrollTop = list.scrollHeight;
}

/** An image message: its thumbnail, fetched with the user's token (no secret in the page). */
function image(message) {
  const img = document.createElement("img");
  img.alt = message.body?.filename ? `Photo ${message.body.filename}` : "Photo";
  const size = message.body?.size;
  if (size?.width && size?.height) {
    const scale = Math.min(1, 240 / Math.max(size.width, size.height));
    img.width = Math.round(size.width * scale);
    img.height = Math.round(size.height * scale);
  }
  const url = message.body?.thumb ?? message.body?.url;
  if (message.localUrl) img.src = message.localUrl;
  else if (url) {
    const cached = state.thumbs.get(url);
    if (cached) img.src = cached;
    else
      fetchFile(state.client, url)
        .then((blob) => {
          const local = URL.createObjectURL(blob);
          state.thumbs.set(url, local);
          img.src = local;
        })
        .catch(() => (img.alt = "Photo (could not be loaded)"));
  }
  img.className = "thumbnail";
  return img;
}

function renderStatusLine() {
  const entry = state.convs.get(state.current);
  let text = "";
  if (entry?.chat === "user") text = state.presence.get(entry.with) === "online" ? "online" : "offline";
  if (entry?.chat === "group") text = "group";
  if (entry?.chat === "room") text = "chatroom";
  $("conv-status").textContent = text;
}

/** Everything shown is read, while the page is visible. */
function markRead(entry) {
  if (!entry || entry.chat === "room" || document.visibilityState !== "visible") return;
  const last = Math.max(entry.last_seq ?? 0, ...state.messages.map((m) => m.seq ?? 0));
  if (last > 0 && (entry.unread > 0 || (entry.read_seq ?? 0) < last)) {
    state.client.read(entry.conv, last);
    entry.read_seq = last;
  }
  entry.unread = 0;
}

// ---- Sending ----------------------------------------------------------------------------------

function target(entry) {
  return { to: entry.with, chat: entry.chat };
}

async function sendText(event) {
  event.preventDefault();
  const entry = state.convs.get(state.current);
  const text = $("text").value.trim();
  if (!entry || !text) return;
  $("text").value = "";
  await sendMessage(entry, { type: "txt", body: { msg: text } });
}

async function sendMessage(entry, { type, body }, localUrl) {
  $("composer-error").textContent = "";
  const local = { cid: `local-${crypto.randomUUID()}`, from: state.me, type, body, ts: Date.now(), state: "sending", localUrl, chat: entry.chat };
  if (state.current === entry.key) {
    state.messages.push(local);
    renderMessages();
  }
  try {
    const ack = await state.client.send({ ...target(entry), type, body });
    Object.assign(local, { id: ack.id, seq: ack.seq, ts: ack.ts, conv: ack.conv, state: "stored" });
    entry.last_message = { ...local };
    entry.last_seq = Math.max(entry.last_seq ?? 0, ack.seq);
    entry.read_seq = entry.last_seq;
    entry.updated = ack.ts;
    if (entry.chat !== "room") state.convs.set(entry.key, entry);
  } catch (e) {
    local.state = "failed";
    showComposerError(e);
  }
  if (state.current === entry.key) {
    // A chatroom message also comes back on the room topic: keep one.
    dedupe();
    renderMessages();
  }
  renderList();
}

function dedupe() {
  const seen = new Set();
  state.messages = state.messages.filter((m) => !m.id || (seen.has(m.id) ? false : seen.add(m.id)));
}

async function sendImage() {
  const file = $("file").files?.[0];
  $("file").value = "";
  const entry = state.convs.get(state.current);
  if (!file || !entry) return;
  try {
    const uploaded = await upload(state.client, file, file.name);
    await sendMessage(entry, { type: "img", body: { url: uploaded.url } }, URL.createObjectURL(file));
  } catch (e) {
    showComposerError(e);
  }
}

function typed() {
  const entry = state.convs.get(state.current);
  if (!entry || entry.chat === "room" || Date.now() - state.typingSentAt < 2000) return;
  state.typingSentAt = Date.now();
  state.client.typing(entry.with, entry.chat);
}

// ---- What arrives ----------------------------------------------------------------------------

function incoming(message) {
  switch (message.op) {
    case "msg":
      return received(message);
    case "receipt":
      return receipt(message);
    case "read_sync":
      return readElsewhere(message);
    case "typing":
      return typing(message);
    case "presence":
      state.presence.set(message.user, message.status);
      renderList();
      return renderStatusLine();
    case "recalled":
    case "edited":
      return changed(message);
    case "event":
      if (message.channel === "group") void refresh();
      return;
    default:
      return;
  }
}

function received(message) {
  const key = message.chat === "room" ? `r:${message.to}` : message.conv;
  let entry = state.convs.get(key);
  if (!entry) {
    if (message.chat === "room") return;
    const peer = message.chat === "user" ? (message.from === state.me ? message.to : message.from) : message.to;
    entry = message.chat === "user" ? userEntry(peer) : { key, conv: key, chat: "group", with: message.to, unread: 0, last_seq: 0, read_seq: 0 };
    state.convs.set(key, entry);
    if (message.chat === "user") watch(peer);
    if (message.chat === "group" && !state.groups.has(message.to)) void refresh();
  }
  // Already counted when the conversation list (fetched after a reconnection) holds it.
  const counted = message.seq > 0 && message.seq <= (entry.last_seq ?? 0);
  if (!counted) {
    entry.last_message = message;
    entry.updated = message.ts;
  }
  if (message.seq) entry.last_seq = Math.max(entry.last_seq ?? 0, message.seq);
  const mine = message.from === state.me;
  if (!mine && message.chat !== "room") {
    state.client.delivered(message.conv, message.seq);
    const open = state.current === key && document.visibilityState === "visible";
    if (!open && !counted) entry.unread = (entry.unread ?? 0) + 1;
  } else if (mine) {
    entry.read_seq = entry.last_seq;
  }
  if (state.current === key) {
    merge(message);
    dedupe();
    if (message.from !== state.me) {
      state.typing.delete(message.from);
      renderTyping();
    }
    renderMessages();
    markRead(entry);
  }
  renderList();
}

function receipt(message) {
  const entry = state.convs.get(message.conv);
  if (!entry) return;
  if (message.type === "read") {
    entry.peer_read_seq = Math.max(entry.peer_read_seq ?? 0, message.seq);
    entry.peer_delivered_seq = Math.max(entry.peer_delivered_seq ?? 0, message.seq);
  } else {
    entry.peer_delivered_seq = Math.max(entry.peer_delivered_seq ?? 0, message.seq);
  }
  if (state.current === message.conv) renderMessages({ scroll: false });
}

function readElsewhere(message) {
  const entry = state.convs.get(message.conv);
  if (!entry) return;
  entry.read_seq = Math.max(entry.read_seq ?? 0, message.seq);
  entry.unread = Math.max(0, (entry.last_seq ?? 0) - entry.read_seq);
  renderList();
}

function typing(message) {
  const key = message.chat === "group" ? `g:${message.to}` : userConv(state.me, message.from);
  if (key !== state.current) return;
  clearTimeout(state.typing.get(message.from));
  state.typing.set(
    message.from,
    setTimeout(() => {
      state.typing.delete(message.from);
      renderTyping();
    }, 4000),
  );
  renderTyping();
}

function renderTyping() {
  const names = [...state.typing.keys()];
  $("typing").textContent = names.length === 0 ? "" : `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`;
}

function changed(message) {
  const m = state.messages.find((x) => x.id === message.id);
  if (m) {
    if (message.op === "recalled") m.recalled = true;
    if (message.op === "edited") m.body = message.body;
    renderMessages({ scroll: false });
  }
  for (const entry of state.convs.values()) {
    if (entry.last_message?.id === message.id && message.op === "recalled") entry.last_message.recalled = true;
  }
  renderList();
}

// ---- Groups and chatrooms -------------------------------------------------------------------

async function createGroupFromDialog() {
  const name = $("group-name").value.trim();
  const members = $("group-members").value.split(",").map((u) => u.trim().toLowerCase()).filter(Boolean);
  try {
    const id = await createGroup(state.client, { name, members });
    state.groups.set(id, name);
    const key = `g:${id}`;
    state.convs.set(key, { key, conv: key, chat: "group", with: id, unread: 0, last_seq: 0, read_seq: 0, updated: Date.now() });
    $("group-dialog").close();
    $("group-form").reset();
    renderList();
    await openConversation(key);
  } catch (e) {
    $("group-error").textContent = describe(e);
  }
}

async function showMembers() {
  const entry = state.convs.get(state.current);
  if (entry?.chat !== "group") return;
  $("members-error").textContent = "";
  $("members-title").textContent = `Members of ${titleOf(entry)}`;
  try {
    const members = await groupMembers(state.client, entry.with);
    $("members-list").replaceChildren(
      ...members.map(({ username, role }) => {
        const li = document.createElement("li");
        const name = document.createElement("span");
        name.textContent = username;
        const roleText = document.createElement("span");
        roleText.className = "role";
        roleText.textContent = role;
        li.append(name, roleText);
        return li;
      }),
    );
  } catch (e) {
    $("members-error").textContent = describe(e);
  }
  if (!$("members-dialog").open) $("members-dialog").showModal();
}

async function addMemberFromDialog() {
  const entry = state.convs.get(state.current);
  const user = $("add-member").value.trim().toLowerCase();
  if (!entry || !user) return;
  try {
    const { failed } = await addMembers(state.client, entry.with, [user]);
    if (failed.length) throw new Error(failed.map((f) => `${f.user}: ${f.reason}`).join("; "));
    $("add-member").value = "";
    await showMembers();
  } catch (e) {
    $("members-error").textContent = describe(e);
  }
}

async function showRooms() {
  $("rooms-error").textContent = "";
  try {
    const rooms = await chatrooms(state.client, 100);
    $("rooms-list").replaceChildren(
      ...rooms.map((room) => {
        const li = document.createElement("li");
        const name = document.createElement("span");
        name.textContent = room.name;
        const join = document.createElement("button");
        join.type = "button";
        join.textContent = state.convs.has(`r:${room.id}`) ? "Open" : "Join";
        join.setAttribute("aria-label", `${join.textContent} ${room.name}`);
        join.addEventListener("click", () => void joinRoom(room.id, room.name));
        li.append(name, join);
        return li;
      }),
    );
  } catch (e) {
    $("rooms-error").textContent = describe(e);
  }
  if (!$("rooms-dialog").open) $("rooms-dialog").showModal();
}

async function joinRoom(id, name) {
  try {
    await state.client.join(id);
    const key = `r:${id}`;
    if (!state.convs.has(key)) state.convs.set(key, { ...roomEntry(id, name), updated: Date.now() });
    $("rooms-dialog").close();
    renderList();
    await openConversation(key);
  } catch (e) {
    $("rooms-error").textContent = describe(e);
  }
}

async function createRoomFromDialog() {
  const name = $("room-name").value.trim();
  if (!name) return;
  try {
    const id = await createChatroom(state.client, name);
    $("room-name").value = "";
    await joinRoom(id, name);
  } catch (e) {
    $("rooms-error").textContent = describe(e);
  }
}

// ---- Wiring ------------------------------------------------------------------------------------

function bindStaticHandlers() {
  $("login-form").addEventListener("submit", (e) => void signIn(e, false));
  $("register").addEventListener("click", (e) => void signIn(e, true));
  $("sign-out").addEventListener("click", () => void signOut());
  $("new-chat").addEventListener("submit", (e) => {
    e.preventDefault();
    const peer = $("peer").value.trim().toLowerCase();
    if (!peer) return;
    $("peer").value = "";
    const key = userConv(state.me, peer);
    if (!state.convs.has(key)) state.convs.set(key, userEntry(peer));
    watch(peer);
    renderList();
    void openConversation(key);
  });
  $("composer").addEventListener("submit", (e) => void sendText(e));
  $("text").addEventListener("input", typed);
  $("file").addEventListener("change", () => void sendImage());
  $("older").addEventListener("click", () => void loadOlder().catch(showComposerError));
  $("back").addEventListener("click", () => {
    delete $("chat").dataset.view;
  });
  $("new-group").addEventListener("click", () => {
    $("group-error").textContent = "";
    $("group-dialog").showModal();
  });
  $("group-form").addEventListener("submit", (e) => {
    e.preventDefault();
    void createGroupFromDialog();
  });
  $("members-button").addEventListener("click", () => void showMembers());
  $("members-form").addEventListener("submit", (e) => {
    e.preventDefault();
    void addMemberFromDialog();
  });
  $("rooms-button").addEventListener("click", () => void showRooms());
  $("rooms-form").addEventListener("submit", (e) => {
    e.preventDefault();
    void createRoomFromDialog();
  });
  for (const close of document.querySelectorAll("[data-close]")) {
    close.addEventListener("click", () => close.closest("dialog").close());
  }
  document.addEventListener("visibilitychange", () => {
    const entry = state.convs.get(state.current);
    if (entry && document.visibilityState === "visible") {
      markRead(entry);
      renderList();
    }
  });
}

// ---- Small helpers ----------------------------------------------------------------------------

function initials(name) {
  return String(name ?? "?").slice(0, 1).toUpperCase();
}

function clock(ts) {
  if (!ts) return "";
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function describe(error) {
  if (error instanceof ChatError) {
    const text = error.message.replace(/^[a-z_]+: /, "");
    return text || error.code;
  }
  return error?.message ?? String(error);
}

function showComposerError(error) {
  $("composer-error").textContent = describe(error);
}

void start();
