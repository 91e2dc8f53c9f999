export { ChatClient } from "./client.js";
export type { Ack, ClientOptions, Incoming, Outgoing, Status } from "./client.js";
export { ChatError } from "./errors.js";
export type { ErrorCode } from "./errors.js";
export { IndexedDbStorage, MemoryStorage, persistentDeviceId } from "./storage.js";
export type { Storage } from "./storage.js";
export {
  addMembers,
  bindPush,
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
} from "./rest.js";
export type { Conversation, GroupSummary } from "./rest.js";
