// A contract server on Node's socket.io 4.8 (join / publish / direct with acks), as the peer
// kit's server_node.js is: the load generator's tests run `relay loadtest` against it over
// both transports. Listens on 127.0.0.1:0 and prints "listening on PORT".
import http from 'node:http';
import { Server } from 'socket.io';

const server = http.createServer();
const io = new Server(server, { cors: { origin: '*' } });

io.on('connection', (socket) => {
  socket.on('join', (msg, ack) => {
    socket.join(msg.room);
    if (typeof ack === 'function') ack({ ok: true, id: socket.id });
  });
  socket.on('publish', (msg, ack) => {
    io.to(msg.room).emit('message', { room: msg.room, data: msg.data });
    if (typeof ack === 'function') ack({ ok: true });
  });
  socket.on('direct', (msg, ack) => {
    io.to(msg.to).emit('message', { from: socket.id, data: msg.data });
    if (typeof ack === 'function') ack({ ok: true });
  });
});

server.listen({ port: 0, host: '127.0.0.1' }, () => {
  console.log(`listening on ${server.address().port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
