// The official socket.io-client (npm, 4.8) against the lab: tests/socket_io.rs runs one
// scenario per call and checks what it prints. Each scenario ends with "ok" and a JSON
// summary, or exits non-zero with what went wrong.
//
//   node tests/node/socket_io.mjs SCENARIO http://127.0.0.1:PORT WS_PORT
import { io } from "socket.io-client";
import { check, done, fail, run } from "./harness.mjs";

const [, url, wsPort] = process.argv.slice(2);
// The websocket transport's port, passed by the Rust test (the lab's one port: the
// `defaults` scenario shows the client needs no option at all).
const toLab = { transportOptions: { websocket: { port: wsPort } } };

/** The next `event` on `socket` (with its arguments), or fail after `ms`. */
function next(socket, event, ms = 10_000) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => fail(`no ${event} within ${ms} ms`), ms);
    socket.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}
/** Wait until `socket` receives a hub event whose data is `data`; returns the event. */
function eventWithData(socket, data) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => fail(`no hub event ${JSON.stringify(data)}`), 10_000);
    const handler = (event) => {
      if (event.data === data) {
        clearTimeout(timer);
        socket.off("event", handler);
        resolve(event);
      }
    };
    socket.on("event", handler);
  });
}
async function publishByRest(text) {
  const response = await fetch(url + "/publish", {
    method: "POST",
    headers: { "Content-Type": "text/plain" },
    body: text,
  });
  check(response.ok, `POST /publish answered ${response.status}`);
  return (await response.json()).id;
}
function lab(options = {}) {
  return io(url + "/lab", { auth: { name: "node" }, reconnection: false, ...toLab, ...options });
}
/** Connect, and wait for the upgrade when the session started on polling. */
async function connected(socket, wantUpgrade) {
  await next(socket, "connect");
  if (wantUpgrade && socket.io.engine.transport.name !== "websocket") {
    await next(socket.io.engine, "upgrade");
  }
  return socket;
}

const scenarios = {
  // Polling, then the upgrade; hub events both ways; acks both ways.
  async upgrade() {
    const socket = lab();
    const transports = [];
    socket.io.on("open", () => transports.push(socket.io.engine.transport.name));
    await connected(socket, true);
    transports.push(socket.io.engine.transport.name);
    const text = "from REST " + Date.now();
    const [event] = await Promise.all([eventWithData(socket, text), publishByRest(text)]);
    const ack = await socket.emitWithAck("publish", "from the client");
    check(Number.isInteger(ack.id), `publish acked ${JSON.stringify(ack)}`);
    const polled = await (await fetch(`${url}/events/poll?since=${ack.id - 1}`)).json();
    check(polled.events.some((e) => e.id === ack.id && e.data === "from the client"), "the client's publish is in the hub");
    // The server asks; our ack answers; the server says what it got.
    socket.on("question", (question, answer) => answer("42, to " + question));
    const answered = next(socket, "answered");
    await socket.emitWithAck("ask-me", "what?");
    const [said] = await answered;
    check(said.answer === "42, to what?", `answered ${JSON.stringify(said)}`);
    socket.close();
    done({ transports, event, ack, answered: said });
  },

  // An emit to a room reaches its members only.
  async rooms() {
    const [a, b, c] = await Promise.all([lab(), lab(), lab()].map((s) => connected(s, true)));
    const joined = await a.emitWithAck("join", "r1");
    check(joined.room === "r1" && joined.rooms === 1, `join ack ${JSON.stringify(joined)}`);
    await b.emitWithAck("join", "r1");
    await c.emitWithAck("join", "r2");
    const cGot = [];
    c.on("said", (s) => cGot.push(s));
    const bHears = next(b, "said");
    const aGot = [];
    a.on("said", (s) => aGot.push(s));
    const reply = await a.emitWithAck("say", { room: "r1", text: "hello r1" });
    check(reply.delivered === 1, `to the room but the sender: delivered to ${reply.delivered}`);
    const [heard] = await bHears;
    check(heard.text === "hello r1" && heard.room === "r1", `b heard ${JSON.stringify(heard)}`);
    // The ack to c's own message to r2 is queued after anything sent to c before it: had r1's
    // message reached c, it would have come first. (c never hears its own.)
    const toR2 = await c.emitWithAck("say", { room: "r2", text: "hello r2" });
    check(toR2.delivered === 0, `r2 has no one else: ${toR2.delivered}`);
    check(cGot.length === 0, `c got ${JSON.stringify(cGot)}`);
    const left = await b.emitWithAck("leave", "r1");
    check(left.room === "r1" && left.rooms === 0, `rooms after leaving ${JSON.stringify(left)}`);
    const again = await a.emitWithAck("say", { room: "r1", text: "alone" });
    check(again.delivered === 0, `after b left, delivered to ${again.delivered}`);
    // broadcast: everyone but the sender; except: not the members of a room.
    const bAll = next(b, "said");
    const all = await a.emitWithAck("say", { text: "to all" });
    check(all.delivered === 2, `broadcast delivered to ${all.delivered}`);
    const [heardAll] = await bAll;
    check(heardAll.text === "to all" && heardAll.room === null, `b heard ${JSON.stringify(heardAll)}`);
    const butR2 = await a.emitWithAck("say", { text: "not r2", except: "r2" });
    check(butR2.delivered === 1, `except r2 delivered to ${butR2.delivered}`);
    check(aGot.length === 0, `the sender never hears itself: ${JSON.stringify(aGot)}`);
    const refused = await c.emitWithAck("say", { room: "r1", text: "not a member" });
    check(refused.error, "saying to a room one has not joined is refused");
    [a, b, c].forEach((s) => s.close());
    done({ delivered: reply.delivered, afterLeave: again.delivered });
  },

  // The reference namespace /custom, binary attachments, and refused CONNECTs.
  // The server ends the socket (socket.disconnect() on its side): the client is told
  // "io server disconnect", does not reconnect by itself, and its session's other
  // namespaces are untouched.
  async "server-disconnect"() {
    // Reconnection on (the default), so staying disconnected is the client's own rule.
    const socket = await connected(lab({ reconnection: true }), false);
    const other = io(url + "/custom", toLab); // the same manager: one session, two namespaces
    await next(other, "connect");
    const bye = next(socket, "disconnect");
    const ack = await socket.emitWithAck("disconnect-me");
    check(ack.disconnecting === true, `ack ${JSON.stringify(ack)}`);
    const [reason] = await bye;
    check(reason === "io server disconnect", `reason: ${reason}`);
    check(!socket.connected && !socket.active, "it does not reconnect by itself");
    const echo = next(other, "message-back");
    other.emit("message", "still here");
    const [said] = await echo;
    check(said === "still here", `the other namespace answered ${said}`);
    other.close();
    done({ reason });
  },

  // The teacher's kick (POST /socket.io/kick?id=, from the lab's machine): the student's
  // client hears "io server disconnect", as from socket.disconnect() on a real server.
  async kick() {
    const socket = await connected(lab({ reconnection: true, auth: { name: "kicked" } }), false);
    const stats = await (await fetch(url + "/stats")).json();
    const me = stats.socket_io_lab.find((s) => s.name === "kicked");
    check(me && me.id === socket.id, `listed: ${JSON.stringify(stats.socket_io_lab)}`);
    const bye = next(socket, "disconnect");
    const kicked = await fetch(url + "/socket.io/kick?id=" + encodeURIComponent(socket.id), { method: "POST" });
    check(kicked.status === 204, `kick answered ${kicked.status}`);
    const [reason] = await bye;
    check(reason === "io server disconnect" && !socket.active, `reason: ${reason}`);
    const again = await fetch(url + "/socket.io/kick?id=" + encodeURIComponent(socket.id), { method: "POST" });
    check(again.status === 404, `a second kick answered ${again.status}`);
    socket.io.engine.close();
    done({ reason });
  },

  async namespaces() {
    const custom = io(url + "/custom", { auth: { token: "abc" }, reconnection: false, ...toLab });
    const [auth] = await next(custom, "auth");
    check(auth.token === "abc", `auth echoed ${JSON.stringify(auth)}`);
    const back = next(custom, "message-back");
    custom.emit("message", 1, "2", { 3: [true] });
    const args = await back;
    check(JSON.stringify(args) === JSON.stringify([1, "2", { 3: [true] }]), `message-back ${JSON.stringify(args)}`);
    const acked = await custom.emitWithAck("message-with-ack", "x", 7);
    check(JSON.stringify(acked) === '"x"' || acked === "x", `ack ${JSON.stringify(acked)}`);
    const bytes = Buffer.from([1, 2, 3, 250]);
    const binaryBack = next(custom, "message-back");
    custom.emit("message", bytes, { nested: Buffer.from([9]) });
    const [gotBytes, gotNested] = await binaryBack;
    check(Buffer.compare(Buffer.from(gotBytes), bytes) === 0, `binary back ${gotBytes}`);
    check(Buffer.from(gotNested.nested)[0] === 9, "a nested attachment comes back");
    // /lab wants a name; an unknown namespace does not exist.
    const nameless = io(url + "/lab", { reconnection: false, ...toLab });
    const [refusal] = await next(nameless, "connect_error");
    check(/name/.test(refusal.message), `refusal: ${refusal.message}`);
    check(refusal.data && refusal.data.field === "name" && refusal.data.max === 32, `refusal data: ${JSON.stringify(refusal.data)}`);
    const nowhere = io(url + "/nowhere", { reconnection: false, ...toLab });
    const [invalid] = await next(nowhere, "connect_error");
    check(invalid.message === "Invalid namespace", `unknown namespace: ${invalid.message}`);
    [custom, nameless, nowhere].forEach((s) => s.close());
    done({ auth, binary: [...Buffer.from(gotBytes)], refusal: refusal.message });
  },

  // Dynamic namespaces (/room-*): made by their first CONNECT, behind a middleware that
  // wants a token; a say reaches the room's other sockets only.
  async "dynamic-namespaces"() {
    const room = (name, auth) => io(url + "/room-" + name, { auth, reconnection: false, forceNew: true, ...toLab });
    const stranger = room("blue", { name: "stranger" });
    const [refused] = await next(stranger, "connect_error");
    check(refused.message === "not authorized" && refused.data && refused.data.reason === "token", `refusal: ${JSON.stringify({ message: refused.message, data: refused.data })}`);
    const alice = room("blue", { token: "let-me-in", name: "alice" });
    const bob = room("blue", { token: "let-me-in", name: "bob" });
    const carol = room("green", { token: "let-me-in", name: "carol" });
    await Promise.all([next(alice, "connect"), next(bob, "connect"), next(carol, "connect")]);
    const stats = await (await fetch(url + "/stats")).json();
    check(JSON.stringify(stats.socket_io_namespaces) === JSON.stringify(["/room-blue", "/room-green"]), `namespaces: ${JSON.stringify(stats.socket_io_namespaces)}`);
    let carolHeard = false;
    carol.on("said", () => { carolHeard = true; });
    const heard = next(bob, "said");
    const ack = await alice.emitWithAck("say", { text: "hi blue" });
    const [said] = await heard;
    check(said.from === "alice" && said.text === "hi blue", `said: ${JSON.stringify(said)}`);
    check(ack.delivered === 1 && !carolHeard, `ack ${JSON.stringify(ack)}, carol heard: ${carolHeard}`);
    [stranger, alice, bob, carol].forEach((s) => s.close());
    done({ refusal: refused.data, delivered: ack.delivered, namespaces: stats.socket_io_namespaces });
  },

  // A forced transport close, events published meanwhile, and the recovery.
  async recovery() {
    const socket = lab({ reconnection: true, reconnectionDelay: 300, reconnectionDelayMax: 300 });
    await connected(socket, true);
    const first = "before the break " + Date.now();
    await Promise.all([eventWithData(socket, first), publishByRest(first)]);
    const id = socket.id;
    const missed = [];
    const disconnected = next(socket, "disconnect");
    socket.io.engine.close();
    const [reason] = await disconnected;
    for (let i = 0; i < 3; i++) missed.push(await publishByRest(`missed ${i}`));
    const seen = [];
    socket.on("event", (event) => seen.push(event.id));
    let atConnect = [];
    socket.once("connect", () => { atConnect = [...seen]; });
    await next(socket, "connect");
    check(socket.recovered === true, "socket.recovered is true");
    check(socket.id === id, `the same socket id (${id} then ${socket.id})`);
    // As from the reference server: what it missed comes before its CONNECT, so the client
    // has emitted every missed event by the time it emits "connect".
    check(missed.every((id) => atConnect.includes(id)), `at "connect", saw ${atConnect}; missed ${missed}`);
    const last = await publishByRest("after the recovery");
    await new Promise((resolve) => {
      const timer = setTimeout(() => fail(`saw ${seen} after the recovery`), 10_000);
      const look = () => (seen.includes(last) ? (clearTimeout(timer), resolve()) : setTimeout(look, 20));
      look();
    });
    // Every event after the last one seen before the break, in order, none twice: the ones
    // published while disconnected among them (and any the generator added).
    const contiguous = seen.every((id, i) => i === 0 || id === seen[i - 1] + 1);
    check(contiguous && missed.every((id) => seen.includes(id)), `events after the break: ${seen}, missed ${missed}`);
    socket.close();
    done({ reason, missed, seen });
  },

  // Room messages are recovered too, not only hub events: b breaks its transport, a says
  // three things to their room meanwhile, and b, recovered, hears every one, in order, once.
  async "room-recovery"() {
    const a = lab();
    const b = lab({ reconnection: true, reconnectionDelay: 300, reconnectionDelayMax: 300 });
    await Promise.all([connected(a, true), connected(b, true)]);
    await a.emitWithAck("join", "r1");
    await b.emitWithAck("join", "r1");
    const heard = [];
    b.on("said", (said) => heard.push(said.text));
    // One before the break, so b's offset names a room message.
    const first = next(b, "said");
    await a.emitWithAck("say", { room: "r1", text: "before" });
    await first;
    const disconnected = next(b, "disconnect");
    b.io.engine.close();
    await disconnected;
    for (const text of ["away 1", "away 2", "away 3"]) await a.emitWithAck("say", { room: "r1", text });
    let atConnect = [];
    b.once("connect", () => { atConnect = [...heard]; });
    await next(b, "connect");
    check(b.recovered === true, "b recovered");
    // Before its CONNECT, as from the reference server.
    check(["away 1", "away 2", "away 3"].every((t) => atConnect.includes(t)), `at "connect", b heard ${JSON.stringify(atConnect)}`);
    await a.emitWithAck("say", { room: "r1", text: "after" });
    const until = Date.now() + 10_000;
    while (!heard.includes("after")) {
      check(Date.now() < until, `b heard ${JSON.stringify(heard)}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    [a, b].forEach((s) => s.close());
    done({ heard });
  },

  // A client that stops answering pings is closed by the server's heartbeat.
  async "ping-timeout"() {
    const socket = lab({ transports: ["websocket"] });
    await next(socket, "connect");
    const engine = socket.io.engine;
    engine.transport.send = () => {}; // deaf and mute from now on: no pong leaves
    const started = Date.now();
    const [reason] = await next(socket, "disconnect", 15_000);
    done({ reason, afterMs: Date.now() - started });
  },

  // A session born on a WebSocket, never polling.
  async "websocket-only"() {
    const socket = lab({ transports: ["websocket"] });
    await next(socket, "connect");
    check(socket.io.engine.transport.name === "websocket", "on a WebSocket from the start");
    const text = "ws only " + Date.now();
    const [event, ack] = await Promise.all([eventWithData(socket, text), socket.emitWithAck("publish", text)]);
    check(event.id === ack.id, "the client's own publish comes back with its id");
    socket.close();
    done({ transport: "websocket", id: ack.id });
  },

  // A session that is told never to upgrade: every packet by held GET and POST.
  async "polling-only"() {
    const socket = lab({ transports: ["polling"] });
    await next(socket, "connect");
    const text = "polling only " + Date.now();
    const [event, ack] = await Promise.all([eventWithData(socket, text), socket.emitWithAck("publish", text)]);
    check(event.id === ack.id, "the client's own publish comes back with its id");
    check(socket.io.engine.transport.name === "polling", "still polling");
    socket.close();
    done({ transport: "polling", id: ack.id });
  },

  // Default options, as a user writes it: `io(url)`. The client opens with polling, probes
  // a WebSocket on the same port, and upgrades.
  async defaults() {
    const socket = io(url + "/lab", { auth: { name: "node" }, reconnection: false });
    const upgraded = next(socket.io.engine, "upgrade"); // the probe starts at once
    await next(socket, "connect");
    await upgraded;
    check(socket.io.engine.transport.name === "websocket", "upgraded to websocket");
    const text = "after the upgrade " + Date.now();
    const [event] = await Promise.all([eventWithData(socket, text), publishByRest(text)]);
    socket.close();
    done({ transport: socket.io.engine.transport.name, event });
  },

  // Default options again, behind a proxy that drops the upgrade headers (nginx's defaults,
  // at /bare/ in front of the lab): the WebSocket probe fails, the client reports
  // `upgradeError`, and the session it already has on polling carries on, events included.
  async fallback() {
    const socket = io(url + "/lab", { path: "/bare/socket.io/", auth: { name: "node" }, reconnection: false });
    const refused = next(socket.io.engine, "upgradeError"); // the probe starts at once
    await next(socket, "connect");
    const [error] = await refused;
    const text = "after the refused upgrade " + Date.now();
    const [event] = await Promise.all([eventWithData(socket, text), publishByRest(text)]);
    const transport = socket.io.engine.transport.name;
    socket.close();
    done({ transport, upgradeError: error.message, event });
  },

  // How a connection ended, in the client's words. The Rust test starts the lab as a child
  // process, and once this prints "connected" it freezes or kills the lab: the client must
  // name what happened as it would for the real server ("ping timeout" when the pings stop,
  // "transport close" when the WebSocket's connection closes, "transport error" when a
  // polling request fails).
  async reasons() {
    const transports = [process.argv[5] || "websocket"];
    const socket = io(url + "/lab", { auth: { name: "node" }, reconnection: false, transports });
    await next(socket, "connect");
    console.log("connected " + socket.io.engine.transport.name);
    const [reason] = await next(socket, "disconnect", 20_000);
    done({ reason, transport: socket.io.engine.transport.name });
  },

  // Many sessions come and go (the Rust test then checks the lab is back to its baseline).
  async sessions() {
    const count = Number(process.env.SESSIONS || 200);
    let connectedCount = 0;
    for (let batch = 0; batch < count / 20; batch++) {
      const sockets = Array.from({ length: 20 }, (_, i) =>
        lab(i % 2 ? { transports: ["websocket"] } : {}),
      );
      await Promise.all(sockets.map((s) => next(s, "connect")));
      connectedCount += sockets.length;
      sockets.forEach((s) => s.close());
    }
    // A closing polling session still sends its close packet (a POST): wait until the lab
    // has seen every one, rather than exit and leave it to the lab's ping timeout.
    const until = Date.now() + 10_000;
    for (;;) {
      const stats = await (await fetch(url + "/stats")).json();
      if (stats.socket_io_sessions === 0) break;
      check(Date.now() < until, `${stats.socket_io_sessions} sessions still open`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    done({ sessions: connectedCount });
  },
};

run(scenarios);
