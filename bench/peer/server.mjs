// The event-loop peer: one Node process, one thread, speaking the lab's contract (PROTOCOL.md)
// for the four techniques `latency --against peer` measures: long polling, fetch streaming,
// Server-Sent Events and WebSocket, plus POST /publish and GET /stats. Where the lab parks a
// thread per held request, this keeps a list of held responses and answers them from one
// loop: the other way to build a push server, measured side by side (LESSONS.md, chapter 13).
//
//   cd bench/peer && npm ci && node server.mjs 127.0.0.1:9090
//
// It is a measuring stick, not a lesson: no pages, no frameworks, no limits but a history ring.
import http from "node:http";
import { WebSocketServer } from "ws";

const [host, port] = (process.argv[2] || "127.0.0.1:9090").split(":");
const HISTORY = 1024;
const HEARTBEAT_MS = 120_000;

const history = []; // the newest HISTORY events, oldest first
let lastId = 0;
const polls = new Set(); // held long polls: { res, since, timer }
const streams = new Set(); // open streams: { res, frame }
const sockets = new Set(); // open WebSockets
const counts = {}; // per technique: requests, bytes
const count = (name, bytes = 0, requests = 0) => {
  const c = (counts[name] ||= { requests: 0, bytes: 0 });
  c.requests += requests;
  c.bytes += bytes;
};

/** Events after `since`, and how many the ring no longer has. */
function backlog(since) {
  const events = history.filter((e) => e.id > since);
  const oldest = history.length ? history[0].id : lastId + 1;
  const missed = since + 1 < oldest ? oldest - since - 1 : 0;
  return { events, missed };
}

function publish(data) {
  const event = { id: ++lastId, data };
  history.push(event);
  if (history.length > HISTORY) history.shift();
  for (const poll of polls) answerPoll(poll);
  for (const stream of streams) {
    const bytes = stream.frame(event);
    stream.res.write(bytes);
    count(stream.name, Buffer.byteLength(bytes));
  }
  const text = JSON.stringify(event);
  for (const socket of sockets) {
    socket.send(text);
    count("websocket", text.length + 2);
  }
  return event;
}

function answerPoll(poll) {
  polls.delete(poll);
  clearTimeout(poll.timer);
  const { events, missed } = backlog(poll.since);
  const last = events.length ? events[events.length - 1].id : Math.min(poll.since, lastId);
  const answer = { events, last, ...(missed ? { missed } : {}) };
  json(poll.res, answer, "long_polling");
}

function json(res, value, name, status = 200) {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    "Content-Type": "application/json",
    "Cache-Control": "no-store",
    "Content-Length": Buffer.byteLength(body),
  });
  res.end(body);
  count(name, Buffer.byteLength(body) + 100);
}

function cursor(url, now) {
  const text = url.searchParams.get("since");
  if (text === null || text === "") return now;
  const n = Number(text);
  return Number.isInteger(n) && n >= 0 ? Math.min(n, now) : null;
}

function openStream(req, res, name, contentType, frame, url) {
  const since = cursor(url, lastId);
  if (since === null) return json(res, { error: "bad since" }, name, 400);
  res.writeHead(200, {
    "Content-Type": contentType,
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
  });
  const stream = { res, frame, name };
  streams.add(stream);
  for (const event of backlog(since).events) res.write(frame(event));
  const heartbeat = setInterval(() => res.write(name === "sse" ? ":\n\n" : "\n"), HEARTBEAT_MS);
  res.on("close", () => {
    clearInterval(heartbeat);
    streams.delete(stream);
  });
}

const server = http.createServer({ noDelay: true, keepAliveTimeout: 30_000 }, (req, res) => {
  const url = new URL(req.url, "http://peer");
  const route = `${req.method} ${url.pathname}`;
  if (route === "POST /publish") {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => json(res, { id: publish(body).id }, "publish", 200));
    return;
  }
  if (route === "GET /stats") {
    return json(res, {
      parked: polls.size,
      streams: streams.size,
      websockets: sockets.size,
      subscribers: polls.size + streams.size + sockets.size,
      events_published: lastId,
      threads: 1,
      websocket: `ws://${host}:${port}/events/ws`,
      lessons: counts,
    }, "stats");
  }
  if (route === "GET /events/long-poll") {
    count("long_polling", 0, 1);
    const since = cursor(url, lastId);
    const timeout = Number(url.searchParams.get("timeout") || 30);
    if (since === null) return json(res, { error: "bad since" }, "long_polling", 400);
    const poll = { res, since, timer: null };
    if (backlog(since).events.length) return answerPoll(poll);
    poll.timer = setTimeout(() => answerPoll(poll), timeout * 1000);
    polls.add(poll);
    res.on("close", () => {
      clearTimeout(poll.timer);
      polls.delete(poll);
    });
    return;
  }
  if (route === "GET /events/stream") {
    count("fetch_streaming", 0, 1);
    return openStream(req, res, "fetch_streaming", "application/x-ndjson", (e) => JSON.stringify(e) + "\n", url);
  }
  if (route === "GET /events/sse") {
    count("sse", 0, 1);
    const frame = (e) => `id: ${e.id}\n${String(e.data).split("\n").map((l) => `data: ${l}`).join("\n")}\n\n`;
    return openStream(req, res, "sse", "text/event-stream", frame, url);
  }
  json(res, { error: `no such path: ${url.pathname}` }, "other", 404);
});

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
server.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url, "http://peer");
  if (url.pathname !== "/events/ws") return socket.destroy();
  wss.handleUpgrade(req, socket, head, (ws) => {
    count("websocket", 0, 1);
    const since = cursor(url, lastId) ?? lastId;
    for (const event of backlog(since).events) ws.send(JSON.stringify(event));
    sockets.add(ws);
    ws.on("message", (data) => publish(String(data)));
    ws.on("close", () => sockets.delete(ws));
    ws.on("error", () => sockets.delete(ws));
  });
});

server.listen(Number(port), host, () => {
  console.error(`peer on http://${host}:${port}/ (one thread, node ${process.version})`);
});
