// An edge proxy (a tunnel or CDN) in front of a worker's gate: it forwards everything, and when
// the upstream has not answered `POST .../experiment` within `timeoutMs` it answers `status`
// (504 by default) with an HTML error page of its own, as Cloudflare (524) or a load balancer
// (504) does. The upstream request is NOT cancelled: the gate goes on, the worker runs the
// experiment and the gate settles the voucher, but the client never hears of it.
import http from "node:http";
import { listen } from "./http.mjs";

export async function startEdge({ upstream, timeoutMs = 1000, status = 504, log }) {
  const target = new URL(upstream);
  const srv = await listen((req, res) => {
    const cut = req.method === "POST" && req.url.endsWith("/experiment");
    const up = http.request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        if (res.headersSent) { answer.resume(); return; } // the client already got the edge's error
        clearTimeout(timer);
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    up.on("error", () => { if (!res.headersSent) { res.writeHead(502, { "content-type": "text/html" }); res.end("<html><body>502 Bad Gateway</body></html>"); } });
    const timer = cut
      ? setTimeout(() => {
          if (res.headersSent) return;
          log?.(`edge: no answer from upstream within ${timeoutMs} ms: ${status} (the request goes on)`);
          res.writeHead(status, { "content-type": "text/html" });
          res.end(`<html><head><title>${status}</title></head><body>${status} Gateway Time-out</body></html>`);
        }, timeoutMs)
      : null;
    req.pipe(up);
  });
  const endpoint = `${srv.url}${target.pathname.replace(/\/$/, "")}`;
  return { endpoint, close: srv.close };
}
