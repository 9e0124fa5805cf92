// Small HTTP helpers shared by the testbed servers.
import http from "node:http";

// Listens on 127.0.0.1 with an OS-chosen port. Returns { server, port, url, close }.
export function listen(app) {
  return new Promise((resolve, reject) => {
    const server = http.createServer(app);
    // Long experiments: never let node's defaults cut a request short.
    server.requestTimeout = 0;
    server.headersTimeout = 60_000;
    server.keepAliveTimeout = 1_000;
    const sockets = new Set();
    server.on("connection", (s) => {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
    });
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      const close = () =>
        new Promise((r) => {
          for (const s of sockets) s.destroy();
          server.close(() => r());
        });
      resolve({ server, port, url: `http://127.0.0.1:${port}`, close });
    });
  });
}

