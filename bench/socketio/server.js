// The Socket.IO peer of the chat benchmark: room chat the way a Node team would write it.
//
//   node server.js [port]        (port 0, the default, picks a free one)
//
// Prints `socketio listening on http://127.0.0.1:PORT/` once it accepts connections.
// Events: `join` (room, ack) joins a room; `send` ({room, text}, ack) broadcasts
// `message` ({room, text, ts, sender}) to every member of the room, the sender included, then
// acknowledges with {ts}. No persistence, no validation: Socket.IO's defaults throughout.
'use strict';

const { createServer } = require('node:http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 0);
const httpServer = createServer();
const io = new Server(httpServer, { serveClient: false });

io.on('connection', (socket) => {
  socket.on('join', (room, ack) => {
    socket.join(room);
    if (typeof ack === 'function') ack({ room });
  });

  socket.on('send', (msg, ack) => {
    const message = { room: msg.room, text: msg.text, ts: Date.now(), sender: socket.id };
    io.to(msg.room).emit('message', message);
    if (typeof ack === 'function') ack({ ts: message.ts });
  });
});

httpServer.listen(port, '127.0.0.1', () => {
  const { port: bound } = httpServer.address();
  console.log(`socketio listening on http://127.0.0.1:${bound}/`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
