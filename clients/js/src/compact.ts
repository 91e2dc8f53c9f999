// The compact encoding of topics.md ("Compact encoding"): the same ops in MessagePack, with
// short positional forms for `send`, `ack` and `msg`. The app sees the same objects either
// way; only the bytes on the wire change (about a third of JSON's for chat traffic).

import { decode, encode, ExtensionCodec } from "@msgpack/msgpack";

const TYPES = ["txt", "img", "loc", "audio", "video", "file", "cmd", "custom"];
const CHATS = ["user", "group", "room"];
const OP_SEND = 1;
const OP_ACK = 2;
const OP_MSG = 3;
/** The extension type of a body that is itself a string. */
const STRING_BODY = 1;

const codec = new ExtensionCodec();
codec.register({
  type: STRING_BODY,
  encode: () => null,
  decode: (data: Uint8Array) => new StringBody(new TextDecoder().decode(data)),
});

class StringBody {
  constructor(readonly value: string) {}
}

type Obj = Record<string, unknown>;

/** A client op as compact bytes. */
export function encodeOp(op: Obj): Uint8Array {
  if (op.op === "send" && op.destroy === undefined && typeof op.cid === "string") {
    const chat = CHATS.indexOf(String(op.chat ?? "user"));
    const type = TYPES.indexOf(String(op.type ?? "txt"));
    if (chat >= 0 && type >= 0) {
      const body = op.body as Obj;
      const short =
        type === 0 && body && Object.keys(body).length === 1 && typeof body.msg === "string" ? body.msg : body;
      const items: unknown[] = [OP_SEND, op.cid, chat, op.to, type, short];
      if (op.ext !== undefined) items.push(op.ext);
      return encode(items);
    }
  }
  return encode(op);
}

/** Server bytes (an op, a room message, a presence update) as the object JSON would give. */
export function decodeOp(bytes: Uint8Array): Obj {
  return expand(decode(bytes, { extensionCodec: codec }));
}

function expand(value: unknown): Obj {
  if (Array.isArray(value)) {
    switch (value[0]) {
      case OP_ACK: {
        const [, cid, id, conv, seq, ts, useq] = value;
        const ack: Obj = { op: "ack", cid, id: idText(id), conv, seq, ts };
        if (useq !== undefined && useq !== null) ack.useq = useq;
        return ack;
      }
      case OP_MSG:
        return message(value);
      default:
        throw new Error(`not a compact envelope: unknown short form ${String(value[0])}`);
    }
  }
  if (value && typeof value === "object" && !(value instanceof Uint8Array)) {
    const obj = { ...(value as Obj) };
    if (Array.isArray(obj.msgs)) obj.msgs = obj.msgs.map((m) => expand(m));
    return obj;
  }
  throw new Error("not a compact envelope");
}

function message(items: unknown[]): Obj {
  const [, id, conv, seq, useq, ts, chat, from, to, type, body, ext, more] = items as [
    number, unknown, string | null, number, number | null, number, number, string, string, number, unknown, unknown, Obj?,
  ];
  const chatName = CHATS[chat];
  const msg: Obj = {
    op: "msg",
    id: idText(id),
    conv: conv ?? derivedConv(chatName, from, to),
    seq,
    ts,
    chat: chatName,
    from,
    to,
    type: TYPES[type],
    body: typeof body === "string" ? { msg: body } : body instanceof StringBody ? body.value : body,
  };
  if (useq !== null && useq !== undefined) msg.useq = useq;
  if (ext !== null && ext !== undefined) msg.ext = ext;
  if (more) Object.assign(msg, more);
  return msg;
}

function derivedConv(chat: string, from: string, to: string): string {
  if (chat === "group") return `g:${to}`;
  if (chat === "room") return `r:${to}`;
  return from <= to ? `u:${from}:${to}` : `u:${to}:${from}`;
}

/** A UUID sent as its 16 bytes, back as text. */
function idText(id: unknown): unknown {
  if (!(id instanceof Uint8Array) || id.length !== 16) return id;
  const hex = [...id].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
