// Shared by every lesson page: the log, the server panel, and publishing a test event.
// Everything shown goes in with textContent, never innerHTML: event data is any text, and
// "<script>" in an event must stay text.
const lab = {
  // One line in the page's log. kind: client | empty | count | event | state | error.
  log(text, kind) {
    const log = document.getElementById('log');
    const line = document.createElement('div');
    line.className = kind || 'client';
    line.textContent = text;
    log.append(line);
    while (log.childElementCount > 500) log.firstElementChild.remove();
    log.scrollTop = log.scrollHeight;
  },

  // "[event] data (#id)" for each event; the tests look for these lines.
  logEvents(events) {
    for (const e of events) lab.log('[event] ' + e.data + '  (#' + e.id + ')', 'event');
  },

  // The live server panel: what /stats says the server holds now, and this lesson's costs.
  statsPanel(lesson) {
    const show = async () => {
      try {
        const s = await (await fetch('/stats')).json();
        const mine = (s.lessons || {})[lesson] || {};
        document.getElementById('server').textContent =
          'events published  ' + s.events_published + '\n' +
          'connections       ' + s.connections + '   parked ' + s.parked +
          '   streams ' + s.streams + '   websockets ' + s.websockets + '\n' +
          'threads           ' + s.threads + '\n' +
          lesson + ': requests ' + (mine.requests || 0) + ', empty answers ' + (mine.empty || 0) +
          ', events delivered ' + (mine.events || 0) + ', bytes ' + (mine.bytes || 0);
      } catch (e) {
        document.getElementById('server').textContent = 'server unreachable: ' + e;
      }
    };
    show();
    setInterval(show, 2000);
  },

  // Where a page's cursor starts: the newest event id now. A stream opened with since=N
  // loses nothing even if its first connection breaks before any event arrives.
  async startCursor() {
    const stats = await (await fetch('/stats')).json();
    return stats.events_published;
  },

  // Read a streaming response as text, chunk by chunk, as the server flushes it. Calls
  // onText(text, bar) for each piece (bar: this connection on the wire timeline); resolves
  // when the stream ends, rejects when it breaks.
  async readStream(url, onText, label, wire) {
    const bar = (wire || lab.wire).open(label || 'GET ' + url.split('?')[0], 'stream');
    try {
      const response = await fetch(url);
      if (!response.ok) throw new Error('HTTP ' + response.status + ': ' + (await response.text()));
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) { bar.close('ended'); return; }
        onText(value, bar);
      }
    } catch (e) {
      bar.close('error');
      throw e;
    }
  },

  // Turn stream chunks into whole lines: a chunk is not a line (proxies split and merge
  // chunks), so keep what follows the last newline for the next chunk.
  lineReader(onLine) {
    let buffer = '';
    return (text, bar) => {
      buffer += text;
      let end;
      while ((end = buffer.indexOf('\n')) !== -1) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 1);
        onLine(line, bar);
      }
    };
  },

  // Keep a stream open: reconnect after it ends or breaks, with a doubling backoff.
  // connect() returns the promise of one connection's life.
  async keepStreaming(connect) {
    let backoff = 1000;
    for (;;) {
      const started = Date.now();
      try {
        await connect();
        lab.log('[client] the stream ended; reconnecting', 'state');
      } catch (e) {
        lab.log('[client] the stream broke (' + e.message + '); reconnecting in ' + backoff / 1000 + ' s', 'error');
      }
      if (Date.now() - started > 10000) backoff = 1000;
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, 30000);
    }
  },

  // This server as another origin. On loopback, under its other name (localhost <->
  // 127.0.0.1 are different origins); from anywhere else (a classroom), on its second port,
  // LAB_OTHER_PORT, which the server writes at the top of this file.
  otherOrigin() {
    const port = location.port ? ':' + location.port : '';
    if (location.hostname === 'localhost') return location.protocol + '//127.0.0.1' + port;
    if (location.hostname === '127.0.0.1') return location.protocol + '//localhost' + port;
    return location.protocol + '//' + location.host.replace(/:\d+$/, '') + ':' + LAB_OTHER_PORT;
  },

  // The "publish" box every page has, so a class can send its own events.
  publishBox() {
    const form = document.getElementById('publish');
    if (!form) return;
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const input = form.querySelector('input');
      await fetch('/publish', { method: 'POST', headers: { 'Content-Type': 'text/plain' }, body: input.value });
      input.value = '';
    });
  },

  // The wire timeline: a picture of what this page itself saw on the wire. Time runs left to
  // right over the last `windowMs`; each connection is a bar in a lane (a new bar takes the
  // first lane free when it starts). A request is a bar from sent to answered: a quick empty
  // poll is a short grey bar, a held long poll a long one that turns green when events come.
  // A stream or socket is one long bar with a tick per event (down: received, up: sent) and a
  // small grey tick per heartbeat. Reconnects are dashed lines across every lane.
  //   const bar = lab.wire.open('GET /events/poll');   // kind: request (default) | stream | socket
  //   bar.tick('in' | 'out' | 'heartbeat');             // while it is open
  //   bar.close('events' | 'empty' | 'ended' | 'error');
  //   lab.wire.mark('reconnect');
  // The bars are plain SVG elements with data- attributes, so a test can read the shapes.
  // lab.timeline(place) makes another one drawn into the element `place` (the compare page
  // has one per technique); lab.wire is the page's own, placed above its log.
  timeline(place, options) {
    const w = {
      windowMs: (options && options.windowMs) || 30000,
      maxLanes: (options && options.maxLanes) || 3,
      bars: [],
      marks: [],
      lanes: [],
      svg: null,
      timer: null,

      open(label, kind) {
        let lane = w.lanes.findIndex((bar) => !bar);
        if (lane < 0) lane = w.lanes.length < w.maxLanes ? w.lanes.length : w.lanes.length - 1;
        const bar = {
          label, kind: kind || 'request', lane, start: performance.now(), end: null, outcome: 'open', ticks: [],
          tick(direction) {
            if (bar.end === null) bar.ticks.push({ t: performance.now(), kind: direction || 'in' });
            w.draw();
          },
          close(outcome) {
            if (bar.end !== null) return;
            bar.end = performance.now();
            bar.outcome = outcome || 'ended';
            if (w.lanes[bar.lane] === bar) w.lanes[bar.lane] = null;
            w.draw();
          },
        };
        w.lanes[lane] = bar;
        w.bars.push(bar);
        w.draw();
        return bar;
      },

      mark(label) {
        w.marks.push({ t: performance.now(), label });
        w.draw();
      },

      // Where the picture goes (made on first use): into `place`, or above the page's log.
      ensureSvg() {
        if (w.svg) return w.svg;
        const row = place || document.querySelector('.row');
        if (!row) return null;
        const NS = 'http://www.w3.org/2000/svg';
        const section = document.createElement('section');
        section.className = 'wire';
        const title = document.createElement('h2');
        title.textContent = 'Wire timeline (last ' + w.windowMs / 1000 + ' s, one lane per connection)';
        w.svg = document.createElementNS(NS, 'svg');
        w.svg.classList.add('wire');
        if (!place) w.svg.id = 'wire';
        w.svg.setAttribute('viewBox', '0 0 600 ' + (w.maxLanes * 16 + 14));
        const legend = document.createElement('p');
        legend.className = 'hint legend';
        legend.innerHTML = '<span class="k events"></span> answered with events <span class="k empty"></span> answered empty ' +
          '<span class="k open"></span> held open / stream <span class="k error"></span> failed ' +
          '· ticks: <b class="t-in">|</b> event in <b class="t-out">|</b> message out <b class="t-hb">|</b> heartbeat ' +
          '· dashed: reconnect';
        if (place) place.append(w.svg);
        else { section.append(title, w.svg, legend); row.before(section); }
        w.timer = setInterval(w.draw, 250);
        return w.svg;
      },

      draw() {
        const svg = w.ensureSvg();
        if (!svg) return;
        const NS = 'http://www.w3.org/2000/svg';
        const now = performance.now();
        const from = now - w.windowMs;
        const x = (t) => Math.max(0, (t - from) / w.windowMs * 600);
        // Forget what scrolled off the left edge.
        w.bars = w.bars.filter((bar) => bar.end === null || bar.end > from);
        w.marks = w.marks.filter((mark) => mark.t > from);
        const el = (name, attrs) => {
          const node = document.createElementNS(NS, name);
          for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
          return node;
        };
        const nodes = [];
        for (let s = 0; s <= w.windowMs / 1000; s += 5) {
          const gx = x(from + s * 1000);
          nodes.push(el('line', { class: 'grid', x1: gx, x2: gx, y1: 0, y2: w.maxLanes * 16 }));
        }
        // The label at 12 px at least, however narrow the picture is drawn (a phone); none
        // where that would cover the lanes (the compare page's small pictures, on a phone).
        const drawn = svg.getBoundingClientRect().width / 600 || 1;
        const size = Math.max(9, 12 / drawn);
        if (size <= 20) {
          nodes.push(el('text', { class: 'axis', x: 598, y: w.maxLanes * 16 + 11, 'text-anchor': 'end', style: 'font-size: ' + size + 'px' }));
          nodes[nodes.length - 1].textContent = 'now';
        }
        for (const bar of w.bars) {
          const y = bar.lane * 16 + 3;
          const x1 = x(bar.start);
          const x2 = Math.max(x1 + 2, x(bar.end === null ? now : bar.end));
          const rect = el('rect', {
            class: 'bar ' + bar.kind + ' ' + bar.outcome, x: x1, y, width: x2 - x1, height: 10,
            'data-kind': bar.kind, 'data-outcome': bar.outcome, 'data-lane': bar.lane,
            'data-ms': Math.round((bar.end === null ? now : bar.end) - bar.start), 'data-ticks': bar.ticks.length,
          });
          const title = el('title', {});
          title.textContent = bar.label + ' · ' + bar.outcome + ' · ' + Math.round((bar.end || now) - bar.start) + ' ms';
          rect.append(title);
          nodes.push(rect);
          for (const tick of bar.ticks) {
            if (tick.t < from) continue;
            const tx = x(tick.t);
            const [y1, y2] = tick.kind === 'out' ? [y - 2, y + 6] : tick.kind === 'heartbeat' ? [y + 3, y + 7] : [y + 4, y + 12];
            nodes.push(el('line', { class: 'tick ' + tick.kind, x1: tx, x2: tx, y1, y2 }));
          }
        }
        for (const mark of w.marks) {
          const mx = x(mark.t);
          const line = el('line', { class: 'mark', x1: mx, x2: mx, y1: 0, y2: w.maxLanes * 16 });
          const title = el('title', {});
          title.textContent = mark.label;
          line.append(title);
          nodes.push(line);
        }
        svg.replaceChildren(...nodes);
      },
    };
    return w;
  },
};
// The page's own timeline.
lab.wire = lab.timeline(null);
