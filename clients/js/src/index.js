// @chat/client: a client of the chat protocol (docs/PROTOCOL.md) for browsers and Node.
export { ChatClient, connect, DEFAULTS, LOBBY, MAX_FRAME_BYTES, decodeJwtClaims, randomId } from './client.js';
export { ChatError, CLIENT_CODES } from './errors.js';
export { RoomSequence } from './sequence.js';
