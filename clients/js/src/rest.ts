// What a device asks the REST API for, as the signed-in user: signing in and registering,
// the conversation list and unread counts, history pages, groups and chatrooms, files,
// push binding. Thin on purpose: docs/api.md has the
// routes and answers.

import type { ChatClient } from "./client.js";
import { ChatError } from "./errors.js";

export interface Conversation {
  conv: string;
  with: string;
  chat: string;
  unread: number;
  last?: Record<string, unknown>;
  [key: string]: unknown;
}

/** The user's conversations, most recent first, with unread counts. */
export async function conversations(chat: ChatClient, username: string, limit = 50): Promise<{ entities: Conversation[]; total_unread: number }> {
  const answer = await chat.rest("GET", `/users/${username}/conversations?limit=${limit}`);
  return { entities: answer.entities, total_unread: answer.total_unread };
}

/** A page of a conversation's history by `seq` (`chat`: `user` and a peer, or `group` and
 * a group id), oldest first; `last_seq` is the conversation's end. */
export async function history(
  chat: ChatClient,
  username: string,
  kind: "user" | "group",
  peer: string,
  page: { fromSeq?: number; toSeq?: number; limit?: number } = {},
): Promise<{ entities: Record<string, unknown>[]; last_seq: number }> {
  const query = new URLSearchParams();
  if (page.fromSeq !== undefined) query.set("from_seq", String(page.fromSeq));
  if (page.toSeq !== undefined) query.set("to_seq", String(page.toSeq));
  query.set("limit", String(page.limit ?? 50));
  const answer = await chat.rest("GET", `/users/${username}/conversations/${kind}/${peer}/messages?${query}`);
  return { entities: answer.entities, last_seq: answer.last_seq };
}

/** Uploads a file; answers its entity (`uuid`, `url`, `share-secret`, …) for a file message. */
export async function upload(chat: ChatClient, file: Blob, filename: string): Promise<Record<string, unknown>> {
  const form = new FormData();
  form.append("file", file, filename);
  const answer = await chat.rest("POST", "/chatfiles", form);
  return answer.entities[0];
}

/** Binds this device's push token (`fcm` or `apns`, or a configured `notifier_name`). */
export async function bindPush(chat: ChatClient, username: string, deviceToken: string, notifierName: string): Promise<void> {
  await chat.rest("PUT", `/users/${username}/push/binding`, {
    device_id: chat.deviceId,
    device_token: deviceToken,
    notifier_name: notifierName,
  });
}

/** A user token for `username` (`POST /{org}/{app}/token`, grant `password`). */
export async function login(
  apiUrl: string,
  org: string,
  app: string,
  username: string,
  password: string,
): Promise<{ access_token: string; expires_in: number }> {
  return anonymous(apiUrl, org, app, "/token", { grant_type: "password", username, password });
}

/** Registers a user without a token: only in an app whose settings have `open_registration`. */
export async function register(
  apiUrl: string,
  org: string,
  app: string,
  user: { username: string; password: string; nickname?: string },
): Promise<Record<string, unknown>> {
  const answer = await anonymous(apiUrl, org, app, "/users", user);
  return answer.entities[0];
}

async function anonymous(apiUrl: string, org: string, app: string, path: string, body: unknown): Promise<any> {
  const resp = await fetch(`${apiUrl.replace(/\/$/, "")}/${org}/${app}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    throw new ChatError(String(answer.error ?? resp.status), String(answer.error_description ?? resp.statusText));
  }
  return answer;
}

/** A group the user is in, as `joined_chatgroups` lists it. */
export interface GroupSummary {
  groupid: string;
  groupname: string;
}

/** Creates a group owned by the signed-in user; answers its id. */
export async function createGroup(
  chat: ChatClient,
  group: { name: string; members?: string[]; description?: string; public?: boolean },
): Promise<string> {
  const answer = await chat.rest("POST", "/chatgroups", {
    groupname: group.name,
    desc: group.description ?? "",
    public: group.public ?? false,
    members: group.members ?? [],
  });
  return answer.data.groupid;
}

/** Adds members to a group (owner and admins); answers who was added and who was not. */
export async function addMembers(
  chat: ChatClient,
  group: string,
  usernames: string[],
): Promise<{ added: string[]; failed: { user: string; reason: string }[] }> {
  const answer = await chat.rest("POST", `/chatgroups/${group}/users`, { usernames });
  return { added: answer.data.newmembers ?? [], failed: answer.data.failed ?? [] };
}

/** A group's members, the owner first: `{username, role}`. */
export async function groupMembers(chat: ChatClient, group: string): Promise<{ username: string; role: string }[]> {
  const answer = await chat.rest("GET", `/chatgroups/${group}/users`);
  return (answer.data as Record<string, string>[]).map((entry) => {
    const [role, username] = Object.entries(entry)[0];
    return { username, role };
  });
}

/** The groups a user is in. */
export async function joinedGroups(chat: ChatClient, username: string): Promise<GroupSummary[]> {
  const answer = await chat.rest("GET", `/users/${username}/joined_chatgroups`);
  return answer.data;
}

/** The app's chatrooms (`{id, name, …}`). */
export async function chatrooms(chat: ChatClient, limit = 50): Promise<{ id: string; name: string }[]> {
  const answer = await chat.rest("GET", `/chatrooms?limit=${limit}`);
  return answer.data;
}

/** Creates a chatroom (the creator owns it); answers its id. */
export async function createChatroom(chat: ChatClient, name: string, description = ""): Promise<string> {
  const answer = await chat.rest("POST", "/chatrooms", { name, description });
  return answer.data.id;
}

/** A chatroom's recent messages, oldest first (members). */
export async function roomHistory(chat: ChatClient, room: string, limit = 50): Promise<Record<string, unknown>[]> {
  const answer = await chat.rest("GET", `/chatrooms/${room}/messages?limit=${limit}`);
  return answer.entities;
}

/** A file's bytes (or its thumbnail) with the user's token, for `<img src=URL.createObjectURL(…)>`. */
export async function fetchFile(chat: ChatClient, url: string): Promise<Blob> {
  return chat.fetchWithToken(url);
}
