// The official atmosphere.js 5 client against the lab's Atmosphere lesson: tests/atmosphere.rs
// runs one scenario per call. Each ends with "ok" and a JSON summary, or exits non-zero with
// what went wrong. (Node 20 has fetch; its WebSocket needs --experimental-websocket, which
// the test passes; it has no EventSource, so SSE is proven in Chromium.)
//
//   node --experimental-websocket tests/node/atmosphere.mjs SCENARIO http://127.0.0.1:PORT WSPORT
import { Atmosphere } from "atmosphere.js";
import { check, done, fail, run } from "./harness.mjs";

const [, url, wsPort] = process.argv.slice(2);
const httpUrl = url + "/atmosphere/lab";
// WebSockets upgrade on the HTTP port: WSPORT is that port (kept for older callers).
const wsUrl = url.replace(/:\d+$/, ":" + wsPort) + "/atmosphere/lab";

// The client keeps its tracking id to itself; listen in on what fetch receives, as the
// lesson page does, and take the id from the handshake.
let trackingId = null;
const realFetch = globalThis.fetch;
globalThis.fetch = async (u, o) => {
  const response = await realFetch(u, o);
  if (String(u).includes("/atmosphere/lab") && (!o || !o.method) && response.body) {
    const reader = response.clone().body.pipeThrough(new TextDecoderStream()).getReader();
    (async () => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        const handshake = /^(?:\d+\|)?([A-Za-z0-9_-]+)\|\d+\|X\|/.exec(value);
        if (handshake) trackingId = handshake[1];
      }
    })().catch(() => {});
  }
  return response;
};

async function publishByRest(text) {
  const response = await realFetch(url + "/publish", { method: "POST", body: text });
  check(response.ok, `POST /publish answered ${response.status}`);
  return (await response.json()).id;
}

function waitFor(what, condition, ms = 10_000) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => fail(`never: ${what}`), ms);
    const look = () => {
      const value = condition();
      if (value) {
        clearTimeout(timer);
        resolve(value);
      } else setTimeout(look, 20);
    };
    look();
  });
}

/** Subscribe with the protocol and size tracking on; everything it sees lands in `seen`. */
async function subscribe(request) {
  const seen = { ids: [], data: [], opens: [], reopens: 0, failures: [] };
  const atmosphere = new Atmosphere({ logLevel: "silent" });
  const subscription = await atmosphere.subscribe(
    { enableProtocol: true, trackMessageLength: true, reconnect: true, reconnectInterval: 300, maxReconnectOnClose: 20, ...request },
    {
      open: (r) => seen.opens.push(r.transport),
      reopen: () => seen.reopens++,
      message: (r) => {
        const message = JSON.parse(r.responseBody);
        seen.ids.push(message.id);
        seen.data.push(message.data);
      },
      transportFailure: (why, r) => seen.failures.push(r.transport),
    },
  );
  return { subscription, seen };
}

/** Events in both directions over one transport. */
async function roundTrip(request) {
  const { subscription, seen } = await subscribe(request);
  await waitFor("opened", () => seen.opens.length > 0);
  const id = await publishByRest("to " + request.transport);
  await waitFor(`event ${id} over ${request.transport}`, () => seen.ids.includes(id));
  const mine = "from " + request.transport + " | with a bar";
  subscription.push(mine);
  await waitFor(`my own message back over ${request.transport}`, () => seen.data.includes(mine));
  await subscription.close();
  return { opened: seen.opens[0], ids: seen.ids.length, failures: seen.failures };
}

const scenarios = {
  // Each transport forced in turn: hub events arrive, the client's messages are published.
  async transports() {
    const summary = {};
    summary["long-polling"] = await roundTrip({ url: httpUrl, transport: "long-polling" });
    summary["streaming"] = await roundTrip({ url: httpUrl, transport: "streaming" });
    summary["websocket"] = await roundTrip({ url: wsUrl, transport: "websocket" });
    done(summary);
  },
  // WebSocket first, refused as a proxy that drops `Upgrade` would (`no-upgrade`): the client
  // falls back to long polling.
  async fallback() {
    const summary = await roundTrip({ url: httpUrl + "?no-upgrade=1", transport: "websocket", fallbackTransport: "long-polling" });
    done(summary);
  },
  // The lab drops the connection; events published meanwhile arrive after the reconnect,
  // each once, in order.
  async resume() {
    const { subscription, seen } = await subscribe({ url: httpUrl, transport: "streaming" });
    await waitFor("opened", () => seen.opens.length > 0);
    const first = await publishByRest("before the drop");
    await waitFor("the first event", () => seen.ids.includes(first));
    const id = await waitFor("the tracking id", () => trackingId);
    const dropped = await realFetch(httpUrl + "?X-Atmosphere-tracking-id=" + id, { method: "DELETE" });
    check(dropped.status === 204, `DELETE answered ${dropped.status}`);
    const away = [await publishByRest("while away 1"), await publishByRest("while away 2")];
    const stats = await (await realFetch(url + "/stats")).json();
    await waitFor("the reconnect", () => seen.reopens > 0);
    await waitFor("the missed events", () => away.every((i) => seen.ids.includes(i)));
    const after = await publishByRest("after");
    await waitFor("a live event after the reconnect", () => seen.ids.includes(after));
    await subscription.close();
    done({ ids: seen.ids, expected: [first, ...away, after], reopens: seen.reopens, connectedWhileAway: stats.atmosphere.connected, trackingId: id });
  },
};

run(scenarios);
