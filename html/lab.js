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
  // onText(text) for each piece; resolves when the stream ends, rejects when it breaks.
  async readStream(url, onText) {
    const response = await fetch(url);
    if (!response.ok) throw new Error('HTTP ' + response.status + ': ' + (await response.text()));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onText(value);
    }
  },

  // Turn stream chunks into whole lines: a chunk is not a line (proxies split and merge
  // chunks), so keep what follows the last newline for the next chunk.
  lineReader(onLine) {
    let buffer = '';
    return (text) => {
      buffer += text;
      let end;
      while ((end = buffer.indexOf('\n')) !== -1) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 1);
        onLine(line);
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

  // This server under its other name: localhost <-> 127.0.0.1 are different origins.
  otherOrigin() {
    const host = location.hostname === 'localhost' ? '127.0.0.1' : 'localhost';
    return location.protocol + '//' + host + (location.port ? ':' + location.port : '');
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
};
