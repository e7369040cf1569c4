// The live refresh of the status page of `ferrysync run --listen`. The server renders the
// same markup (src/agent/status_page.rs), so the page works without this script. It polls
// /api/status (the `ferrysync status --json` document) once a second and redraws the jobs; on
// a job's page it also fetches the page again when a run starts or ends, for the list of runs.
// Every value from the document goes in as text (textContent), never as markup: job names,
// paths and errors are hostile input.
'use strict';
(function () {
  const POLL_MS = 1000;
  const RATE_WINDOW_MS = 10000;
  const FAILURES_SHOWN = 5;
  const page = document.body.dataset.page;
  if (page !== 'index' && page !== 'job') return;
  const jobName = page === 'job'
    ? decodeURIComponent(location.pathname.slice('/jobs/'.length)) : null;
  // The server's clock minus the browser's, in ms (rates averaged since a run's start).
  const clockOffset = Number(document.body.dataset.now) * 1000 - Date.now();
  const samples = new Map(); // run id -> [[ms, bytes done], ...] over the last RATE_WINDOW_MS
  const live = document.getElementById('live');
  const updated = document.getElementById('updated');
  let runsKey = currentRunsKey(document);

  // Control characters, DEL, C1 and the bidirectional controls made visible, as
  // escape_controls (src/sync/report.rs) does for the server-rendered page.
  const CONTROLS = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
  function shown(s) {
    return String(s).replace(CONTROLS, function (c) {
      switch (c) {
        case '\u001b': return '\\e';
        case '\r': return '\\r';
        case '\n': return '\\n';
        case '\t': return '\\t';
        case '\u0000': return '\\0';
      }
      const n = c.charCodeAt(0);
      if (n < 0x20 || n === 0x7f) return '\\x' + n.toString(16).padStart(2, '0');
      return '\\u{' + n.toString(16) + '}';
    });
  }

  function humanBytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let v = n;
    let u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u += 1; }
    return u === 0 ? n + ' B' : v.toFixed(1) + ' ' + units[u];
  }

  function duration(secs) {
    const s = Math.max(0, Math.floor(secs));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  }

  function seconds(iso) { return Date.parse(iso) / 1000; }

  // An element with attributes and children (strings become text nodes).
  function el(tag, attrs) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const child of Array.prototype.slice.call(arguments, 2)) {
      if (child === null || child === undefined) continue;
      e.append(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return e;
  }

  function fact(label, cls) {
    const dd = el('dd', { class: cls });
    for (const part of Array.prototype.slice.call(arguments, 2)) dd.append(part);
    return el('div', null, el('dt', null, label), dd);
  }

  function moved(r) {
    const parts = [
      r.files_up + ' up (' + humanBytes(r.bytes_up) + ')',
      r.files_down + ' down (' + humanBytes(r.bytes_down) + ')',
      r.files_deleted + ' deleted',
      r.files_failed + ' failed',
    ];
    if (r.files_adopted > 0) parts.push(r.files_adopted + ' adopted');
    if (r.files_waiting > 0) parts.push(r.files_waiting + ' waiting');
    return parts.join(' · ');
  }

  // Bytes per second of a running run: over the last seconds seen, else since its start.
  function rate(run, nowMs) {
    const p = run.progress;
    let list = samples.get(run.id) || [];
    list.push([nowMs, p.bytes_done]);
    list = list.filter(function (s) { return nowMs - s[0] <= RATE_WINDOW_MS; });
    samples.set(run.id, list);
    const first = list[0];
    if (nowMs - first[0] >= 2000) return (p.bytes_done - first[1]) * 1000 / (nowMs - first[0]);
    const elapsed = Math.max(1, (nowMs + clockOffset) / 1000 - seconds(run.started_at));
    return p.bytes_done / elapsed;
  }

  function progress(run, nowMs) {
    const box = el('div', { class: 'progress' });
    const p = run.progress;
    if (!p) {
      box.append(el('p', { class: 'progress-text' }, 'Connecting and comparing both sides…'));
      return box;
    }
    const [value, max] = p.bytes_total > 0
      ? [Math.min(p.bytes_done, p.bytes_total), p.bytes_total]
      : [Math.min(p.files_done, p.files_total), Math.max(1, p.files_total)];
    const percent = Math.floor(value * 100 / max);
    const bps = rate(run, nowMs);
    const eta = bps >= 1
      ? 'ETA ' + duration(Math.max(0, p.bytes_total - p.bytes_done) / bps) : 'ETA unknown';
    box.append(
      el('progress', { value: String(value), max: String(max) }, percent + '%'),
      el('p', { class: 'progress-text' },
        el('span', { class: 'files' }, p.files_done + ' / ' + p.files_total + ' files'), ' · ',
        el('span', { class: 'bytes' }, humanBytes(p.bytes_done) + ' / ' + humanBytes(p.bytes_total)),
        ' · ', el('span', { class: 'rate' }, humanBytes(Math.floor(bps)) + '/s'), ' · ',
        el('span', { class: 'eta' }, eta)));
    if (p.current && p.current.length > 0) {
      const list = el('ul', { class: 'in-flight' });
      for (const f of p.current) list.append(el('li', null, el('code', null, shown(f))));
      box.append(el('p', { class: 'in-flight-label' }, 'In flight:'), list);
    }
    return box;
  }

  function errors(j) {
    const failures = (j.last_run && j.last_run.failures) || [];
    if (!j.last_error && j.config_errors.length === 0 && failures.length === 0) return null;
    const box = el('div', { class: 'errors' });
    if (j.last_error) {
      box.append(el('p', { class: 'last-error' }, el('strong', null, 'Last error:'), ' ',
        el('span', null, shown(j.last_error))));
    }
    if (j.config_errors.length > 0) {
      box.append(el('p', null, j.state === 'invalid'
        ? 'Invalid job file, not running:'
        : 'Invalid job file, its last valid version keeps running:'));
      const list = el('ul', { class: 'config-errors' });
      for (const e of j.config_errors) list.append(el('li', null, shown(e)));
      box.append(list);
    }
    if (failures.length > 0) {
      box.append(el('p', null, 'Failed in the last run:'));
      const list = el('ul', { class: 'failures' });
      for (const f of failures.slice(0, FAILURES_SHOWN)) {
        list.append(el('li', null, el('code', null, shown(f.path)), ': ' + shown(f.error)));
      }
      const all = Math.max(j.last_run.files_failed, failures.length);
      if (all > FAILURES_SHOWN) list.append(el('li', null, 'and ' + (all - FAILURES_SHOWN) + ' more'));
      box.append(list);
    }
    return box;
  }

  function card(j, nowMs, link) {
    const r = j.last_run;
    const name = link
      ? el('a', { href: '/jobs/' + encodeURIComponent(j.name) }, shown(j.name))
      : document.createTextNode(shown(j.name));
    const facts = el('dl', { class: 'facts' });
    if (j.direction) {
      facts.append(fact('Direction', 'direction', shown(j.direction) + ': ',
        el('code', null, shown(j.local)), ' → ', el('code', null, shown(j.remote))));
    }
    if (r) {
      const took = r.ended_at
        ? 'took ' + duration(seconds(r.ended_at) - seconds(r.started_at))
        : 'for ' + duration((nowMs + clockOffset) / 1000 - seconds(r.started_at));
      facts.append(fact('Last run', 'last-run', r.started_at + ' · ',
        el('span', { class: 'outcome outcome-' + r.outcome }, r.outcome),
        ' · ' + shown(r.trigger) + ' · ' + took));
    } else {
      facts.append(fact('Last run', 'last-run', 'never'));
    }
    facts.append(
      fact('Next run', 'next-run', j.next_run ? shown(j.next_run)
        : (j.schedule ? 'none' : 'on change or poll only (no schedule)')),
      fact('Last success', 'last-success', j.last_success ? shown(j.last_success) : 'never'),
      fact('Failures in a row', 'failures-in-a-row', String(j.consecutive_failures)),
      fact('Files in sync', 'synced', String(j.synced_files)));
    if (r && r.outcome !== 'running') facts.append(fact('Last run moved', 'moved', moved(r)));
    return el('article',
      { class: 'job', 'data-job': shown(j.name), 'data-state': j.state, 'data-outcome': r ? r.outcome : 'none' },
      el('h2', null, name, ' ', el('span', { class: 'badge state-' + j.state }, j.state)),
      facts,
      r && r.outcome === 'running' ? progress(r, nowMs) : null,
      errors(j));
  }

  // The newest run on a job's page ("id:outcome"), to see when the list of runs is stale.
  function currentRunsKey(doc) {
    const run = doc.querySelector('#runs .run');
    return run ? run.dataset.run + ':' + run.dataset.outcome : '';
  }

  async function refreshRuns() {
    const r = await fetch(location.pathname, { cache: 'no-store' });
    if (!r.ok) return;
    const fresh = new DOMParser().parseFromString(await r.text(), 'text/html');
    const runs = fresh.getElementById('runs');
    const old = document.getElementById('runs');
    if (runs && old) {
      old.replaceWith(document.adoptNode(runs));
      runsKey = currentRunsKey(document);
    }
  }

  async function render(doc) {
    const nowMs = Date.now();
    const section = document.getElementById('jobs');
    if (!section) return;
    let jobs = doc.jobs;
    if (page === 'job') jobs = jobs.filter(function (j) { return j.name === jobName; });
    const fresh = jobs.map(function (j) { return card(j, nowMs, page === 'index'); });
    if (fresh.length === 0) fresh.push(el('p', { class: 'empty' }, 'No job has run yet.'));
    section.replaceChildren.apply(section, fresh);
    updated.textContent = 'as of ' + new Date(nowMs + clockOffset).toISOString().replace(/\.\d+Z$/, 'Z');
    if (page === 'job' && jobs.length === 1 && jobs[0].last_run) {
      const key = jobs[0].last_run.id + ':' + jobs[0].last_run.outcome;
      if (key !== runsKey) await refreshRuns();
    }
  }

  async function poll() {
    try {
      const r = await fetch('/api/status', { cache: 'no-store', headers: { Accept: 'application/json' } });
      if (!r.ok) throw new Error('HTTP ' + r.status);
      await render(await r.json());
      live.textContent = 'live: updated every second';
      live.className = 'live';
    } catch (e) {
      live.textContent = 'live updates lost (' + e.message + '); retrying';
      live.className = 'stale';
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
