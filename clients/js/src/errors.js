// Errors of the chat client: the server's error replies and the client's own failures.

/**
 * Codes the client gives itself (beside the server's: bad_request, unknown_action, not_member,
 * payload_too_large, rate_limited, limit_exceeded, forbidden, internal).
 */
export const CLIENT_CODES = Object.freeze([
  'timeout', // no reply within the call's timeout
  'disconnected', // the connection dropped while a change (edit, delete, react, ...) was in flight
  'closed', // the client was closed (close(), or its first connection failed)
  'queue_full', // too many sends are waiting (the maxQueue option)
  'connect_failed', // the first connection could not be opened
  'left', // the room was left while the call waited
  'removed', // the server removed this user from the room (banned or revoked)
]);

/** A failed call: `code` is the protocol's error code, or one of CLIENT_CODES. */
export class ChatError extends Error {
  /**
   * @param {string} code
   * @param {string} [message]
   * @param {object} [details] requestId, action, request, room, clientMsgId, serverMessage,
   *   gateway (API Gateway's own "Internal server error" frame), local (refused before sending)
   */
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = 'ChatError';
    this.code = code;
    for (const [k, v] of Object.entries(details)) {
      if (v !== undefined) this[k] = v;
    }
  }
}
