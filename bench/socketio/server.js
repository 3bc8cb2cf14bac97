// The Socket.IO 4 peer of `./bench.sh fanout`: the same room fan-out as ours, with nothing
// else. A client emits 'join' (room[, ack]) to enter a room and 'pub' (room, payload) to send
// payload to everyone else in the room as 'msg'. WebSocket transport only, on 127.0.0.1:$PORT.
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

const port = Number(process.env.PORT || 3000);
const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
});

io.on('connection', (socket) => {
  socket.on('join', (room, ack) => {
    socket.join(room);
    if (typeof ack === 'function') ack('ok');
  });
  socket.on('pub', (room, payload) => {
    socket.to(room).emit('msg', payload);
  });
});

httpServer.listen(port, '127.0.0.1', () => {
  console.log(`listening ${port}`);
});
