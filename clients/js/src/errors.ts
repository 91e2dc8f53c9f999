// Errors the server answers, typed by their code (topics.md, "error: refused").

/** The codes of topics.md; any other the server adds arrives as a plain string. */
export type ErrorCode =
  | "bad_json"
  | "too_large"
  | "unknown_op"
  | "invalid"
  | "bad_envelope"
  | "unknown_recipient"
  | "blocked"
  | "not_contact"
  | "not_found"
  | "not_member"
  | "banned"
  | "muted"
  | "disabled"
  | "forbidden"
  | "message_too_large"
  | "forbidden_content"
  | "rate_limited"
  | "too_late"
  | "moderated"
  | "moderation_unavailable"
  | "internal"
  | (string & {});

/** A refusal from the server: `code` says what, `message` says why (and, for
 * `rate_limited`, when to retry). */
export class ChatError extends Error {
  readonly code: ErrorCode;
  readonly cid?: string;

  constructor(code: ErrorCode, message: string, cid?: string) {
    super(`${code}: ${message}`);
    this.name = "ChatError";
    this.code = code;
    this.cid = cid;
  }
}
