// What a device asks the REST API for, as the signed-in user: the conversation list and
// unread counts, history pages, files, push binding. Thin on purpose: docs/api.md has the
// routes and answers.

import type { ChatClient } from "./client.js";

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
