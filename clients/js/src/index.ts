export { ChatClient } from "./client.js";
export type { Ack, ClientOptions, Incoming, Outgoing } from "./client.js";
export { ChatError } from "./errors.js";
export type { ErrorCode } from "./errors.js";
export { IndexedDbStorage, MemoryStorage, persistentDeviceId } from "./storage.js";
export type { Storage } from "./storage.js";
export { bindPush, conversations, history, upload } from "./rest.js";
export type { Conversation } from "./rest.js";
