// The official CometD client (npm `cometd` with `cometd-nodejs-client`) against the lab's
// Bayeux server: tests/bayeux.rs runs one scenario per call. Each ends with "ok" and a JSON
// summary, or exits non-zero with what went wrong.
//
//   node tests/node/bayeux.mjs SCENARIO http://127.0.0.1:PORT
import { adapt } from "cometd-nodejs-client";
import { CometD, AckExtension } from "cometd";
import { check, done, fail, run } from "./harness.mjs";

adapt();
const [, url] = process.argv.slice(2);

async function publishByRest(text) {
  const response = await fetch(url + "/publish", { method: "POST", body: text });
  check(response.ok, `POST /publish answered ${response.status}`);
  return (await response.json()).id;
}
/** A client with the ack extension, handshaken (websocket first: the library's default;
 * `http` turns WebSocket off, for the scenarios that tamper with XMLHttpRequest). */
function client(handshakes, { http = false } = {}) {
  const cometd = new CometD();
  cometd.registerExtension("ack", new AckExtension());
  cometd.configure({ url: url + "/cometd", logLevel: "warn" });
  if (http) cometd.websocketEnabled = false;
  return new Promise((resolve) => {
    cometd.addListener("/meta/handshake", (reply) => {
      handshakes.push({ successful: reply.successful, transport: reply.failure ? reply.failure.connectionType : cometd.getTransport().type });
      if (reply.successful) resolve(cometd);
    });
    cometd.handshake();
  });
}
/** Subscribe; resolves with the reply, and the handle to unsubscribe with as `handle`. */
const subscribe = (cometd, channel, onMessage) =>
  new Promise((resolve) => {
    const handle = cometd.subscribe(channel, onMessage, (reply) => resolve({ ...reply, handle }));
  });
const unsubscribe = (cometd, subscription) =>
  new Promise((resolve) => cometd.unsubscribe(subscription, (reply) => resolve(reply)));
const publish = (cometd, channel, data) =>
  new Promise((resolve) => cometd.publish(channel, data, (reply) => resolve(reply)));
/** Resolves with the first message `filter` accepts among those `collect` gathers. */
function waitFor(list, what, filter) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => fail(`never got ${what}: ${JSON.stringify(list)}`), 10_000);
    const look = () => {
      const found = list.find(filter);
      if (found) {
        clearTimeout(timer);
        resolve(found);
      } else setTimeout(look, 20);
    };
    look();
  });
}

const scenarios = {
  // With default options: the websocket transport at /cometd; wildcards, the hub both ways,
  // a service, client-to-client channels, unsubscribe.
  async basics() {
    const handshakes = [];
    const a = await client(handshakes);
    const events = [];
    const wild = await subscribe(a, "/lab/**", (m) => events.push(m.data));
    check(wild.successful, "subscribed to /lab/**");
    const text = "from REST " + Date.now();
    await publishByRest(text);
    await waitFor(events, "the REST event", (e) => e.data === text);
    const published = await publish(a, "/lab/events", "from cometd");
    check(published.successful && published.data === undefined, `publish acked without data: ${JSON.stringify(published)}`);
    const hub = await waitFor(events, "its own publish back from the hub", (e) => e.data === "from cometd");
    const polled = await (await fetch(`${url}/events/poll?since=${hub.id - 1}`)).json();
    check(polled.events.some((e) => e.id === hub.id), "the client's publish is in the hub");
    const echoes = [];
    await subscribe(a, "/service/echo", (m) => echoes.push(m.data));
    await publish(a, "/service/echo", { hello: "service" });
    await waitFor(echoes, "the echo", (e) => e.hello === "service");
    // Remote calls: the services answer under the call's id, which is how remoteCall finds
    // its callback.
    const time = await new Promise((resolve) => a.remoteCall("time", {}, 5000, resolve));
    check(time.successful !== false && time.data.millis > 0, `time: ${JSON.stringify(time)}`);
    const echoed = await new Promise((resolve) => a.remoteCall("echo", { n: 7 }, 5000, resolve));
    check(echoed.data.n === 7, `echo: ${JSON.stringify(echoed)}`);
    // The policy: /secret/** refuses a subscription with CometD's error string.
    const secret = await subscribe(a, "/secret/plans", () => {});
    check(!secret.successful && secret.error === "403:secret_channel:subscribe_denied", `secret: ${JSON.stringify(secret)}`);
    // Two clients on chat channels.
    const b = await client([]);
    const bGot = [];
    const bChat = await subscribe(b, "/chat/*", (m) => bGot.push({ channel: m.channel, data: m.data }));
    await subscribe(b, "/other/x", (m) => bGot.push({ channel: m.channel, data: m.data }));
    await publish(a, "/chat/room1", { text: "hi b" });
    await waitFor(bGot, "a's chat", (m) => m.channel === "/chat/room1");
    const left = await unsubscribe(b, bChat.handle);
    check(left.successful, "unsubscribed");
    await publish(a, "/chat/room1", { text: "not for b" });
    await publish(a, "/other/x", { text: "still for b" });
    await waitFor(bGot, "the marker after the unsubscribe", (m) => m.channel === "/other/x");
    check(bGot.filter((m) => m.channel === "/chat/room1").length === 1, `after unsubscribing b got ${JSON.stringify(bGot)}`);
    await new Promise((resolve) => a.disconnect(resolve));
    await new Promise((resolve) => b.disconnect(resolve));
    done({ handshakes, events: events.length, echo: echoes[0], chat: bGot });
  },

  // The network stalls longer than maxInterval: the lab forgets the client, whose next
  // connect gets 402 with the advice to handshake; the client does, subscribes again (in its
  // handshake listener, as CometD advises) and receives events again.
  async rehandshake() {
    const handshakes = [];
    const cometd = new CometD();
    cometd.registerExtension("ack", new AckExtension());
    cometd.configure({ url: url + "/cometd", logLevel: "warn" });
    cometd.websocketEnabled = false; // the stall below is one of XMLHttpRequest's
    const events = [];
    const unknown = [];
    cometd.addListener("/meta/connect", (reply) => {
      if (!reply.successful && String(reply.error).startsWith("402")) unknown.push(reply.error);
    });
    cometd.addListener("/meta/handshake", (reply) => {
      handshakes.push(reply.successful);
      if (reply.successful) cometd.subscribe("/lab/events", (m) => events.push(m.data));
    });
    cometd.handshake();
    const first = "before the stall " + Date.now();
    await waitFor(handshakes, "a handshake", (ok) => ok);
    await new Promise((resolve) => setTimeout(resolve, 200)); // the subscription's round trip
    await publishByRest(first);
    await waitFor(events, "the first event", (e) => e.data === first);
    // Stall every request for 2.5 s (the lab runs with --bayeux-max-interval 1000).
    const XHR = globalThis.window.XMLHttpRequest; // cometd-nodejs-client's, set by adapt()
    const send = XHR.prototype.send;
    XHR.prototype.send = function (...args) {
      setTimeout(() => send.apply(this, args), 2500);
    };
    await waitFor(unknown, "a 402 after the stall", () => true);
    XHR.prototype.send = send;
    await waitFor(handshakes, "a second handshake", (ok, i) => ok && i > 0);
    const after = "after the new handshake " + Date.now();
    const publisher = setInterval(() => publishByRest(after), 300);
    await waitFor(events, "an event after the new handshake", (e) => e.data === after);
    clearInterval(publisher);
    await new Promise((resolve) => cometd.disconnect(resolve));
    done({ handshakes, unknown });
  },
};

// The ack extension across a dropped connection: the answer to a held connect that carried
// an event is lost on the way (the client sees a network error); the client connects again
// naming the batch before it, and the lab sends the event again. Nothing lost, nothing twice.
scenarios.ack = async function () {
  const handshakes = [];
  const cometd = await client(handshakes, { http: true });
  const events = [];
  await subscribe(cometd, "/lab/events", (m) => events.push(m.data));
  const XHR = globalThis.window.XMLHttpRequest; // cometd-nodejs-client's, set by adapt()
  const send = XHR.prototype.send;
  let dropped = null;
  XHR.prototype.send = function (body) {
    const onload = this.onload;
    this.onload = () => {
      if (!dropped && String(body).includes("/meta/connect") && this.responseText.includes("/lab/events")) {
        dropped = this.responseText; // lost: as if the connection broke before it arrived
        this.onerror();
      } else {
        onload.call(this);
      }
    };
    return send.call(this, body);
  };
  const text = "must arrive once " + Date.now();
  const id = await publishByRest(text);
  await waitFor(events, "the event, sent again", (e) => e.id === id);
  const later = await publishByRest("after it");
  await waitFor(events, "the next event", (e) => e.id === later);
  XHR.prototype.send = send;
  check(dropped !== null, "an answer was dropped");
  const ids = events.map((e) => e.id);
  check(ids.filter((x) => x === id).length === 1, `the event arrived once: ${ids}`);
  await new Promise((resolve) => cometd.disconnect(resolve));
  done({ dropped: JSON.parse(dropped).length, ids });
};

// What a delivery costs, per transport (the book's figures: chapter 16):
//   node tests/node/bayeux.mjs cost http://127.0.0.1:8080 [EVENTS]
// One client without acks, subscribed to /lab/events, EVENTS events (default 50) published by
// REST 100 ms apart; the lab's own counters (/stats) before and after: requests and bytes the
// Bayeux lesson served per event. Run it against a lab with --generator off and no other
// Bayeux client.
scenarios.cost = async function () {
  const count = Number(process.argv[4] || 50);
  const bayeux = async () => (await (await fetch(url + "/stats")).json()).lessons.bayeux || {};
  const figures = {};
  for (const transport of ["websocket", "long-polling"]) {
    const cometd = new CometD();
    cometd.configure({ url: url + "/cometd", logLevel: "warn" });
    if (transport !== "websocket") cometd.websocketEnabled = false;
    await new Promise((resolve) => {
      cometd.addListener("/meta/handshake", (reply) => reply.successful && resolve());
      cometd.handshake();
    });
    check(cometd.getTransport().type === transport, `on ${cometd.getTransport().type}`);
    const events = [];
    await subscribe(cometd, "/lab/events", (m) => events.push(m.data));
    const before = await bayeux();
    for (let n = 0; n < count; n++) {
      await publishByRest("xxxxxxx");
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await waitFor(events, `all ${count} events`, () => events.length >= count);
    const after = await bayeux();
    figures[transport] = {
      requests_per_event: ((after.requests || 0) - (before.requests || 0)) / count,
      bytes_per_event: Math.round(((after.bytes || 0) - (before.bytes || 0)) / count),
    };
    await new Promise((resolve) => cometd.disconnect(resolve));
  }
  done(figures);
};

// Where WebSocket is refused (here a proxy that drops the upgrade headers: the lab answers
// the plain GET with an error), the client falls back to long polling and works on.
scenarios.fallback = async function () {
  const handshakes = [];
  const cometd = await client(handshakes);
  const events = [];
  await subscribe(cometd, "/lab/events", (m) => events.push(m.data));
  const text = "after the fallback " + Date.now();
  await publishByRest(text);
  await waitFor(events, "an event over long polling", (e) => e.data === text);
  const transport = cometd.getTransport().type;
  await new Promise((resolve) => cometd.disconnect(resolve));
  done({ handshakes, transport });
};

run(scenarios);
