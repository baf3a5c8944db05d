// Connect storm: open N websocket clients at a fixed rate, time each one from io() to 'connect'.
//   node connect_storm.js --url http://127.0.0.1:8000 --count 10000 --rate 1000 --server-pid 1234 [--procs 2] [--json FILE]
// Prints and (with --json) appends one JSON line: connected, errors, p50/p99/max connect ms, server CPU,
// and what the clients themselves cost: their CPU and their event-loop delay. A socket.io-client
// process opening 1,000 sockets/s uses most of a core, and then its own event-loop delay lands in
// the measured connect times; --procs spreads the clients over that many processes (each opens
// count/procs at rate/procs) so the figure is the server's, not the generator's. --warmup N first
// opens and closes N clients (against --warmup-url, by default the same server), unmeasured.
// STORM_TRACE=FILE writes each measured connect's [start ms, latency ms] there (FILE.<worker>
// with --procs over 1): where in the storm the slow ones fall.
// Uses socket.io-client from BENCH_NODE_MODULES (the peer kit's install), like the kit's loadgen.
const fs = require('fs');
const { fork } = require('child_process');
const { performance, monitorEventLoopDelay } = require('perf_hooks');
if (process.env.BENCH_NODE_MODULES) module.paths.push(process.env.BENCH_NODE_MODULES);

const A = { url: 'http://127.0.0.1:8000', count: 10000, rate: 1000, 'server-pid': '', json: '', label: '', 'max-time': 120, procs: 1, worker: 0, index: 0, warmup: 0, 'warmup-url': '' };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const k = argv[i].replace(/^--/, '');
  if (!(k in A)) { console.error(`unknown option --${k}`); process.exit(2); }
  A[k] = typeof A[k] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
}
setTimeout(() => { console.error('hard time limit hit'); process.exit(3); }, A['max-time'] * 1000).unref();

// One process's share: open `count` sockets at `rate`/s, then report latencies, errors, own cost.
function storm(count, rate, done, url = A.url, tracePath = '') {
  const { io } = require('socket.io-client');
  const trace = []; const lat = []; const sockets = []; let errors = 0; let lastError = ''; let started = 0; let settled = 0;
  const t0 = performance.now(); const cpu0 = process.cpuUsage();
  const loop = monitorEventLoopDelay({ resolution: 5 }); loop.enable();
  function openOne() {
    const t = performance.now();
    const s = io(url, { transports: ['websocket'], forceNew: true, reconnection: false, timeout: 20000 });
    sockets.push(s);
    s.once('connect', () => { lat.push(performance.now() - t); if (tracePath) trace.push([Math.round(t - t0), Math.round(performance.now() - t)]); settled++; });
    s.once('connect_error', (e) => { errors++; lastError = String(e.message || e); settled++; });
  }
  const timer = setInterval(() => {
    const due = Math.min(count, Math.floor(((performance.now() - t0) / 1000) * rate) + 1);
    while (started < due) { started++; openOne(); }
    if (started >= count) clearInterval(timer);
  }, 2);
  const check = setInterval(() => {
    if (settled < count) return;
    clearInterval(check);
    loop.disable(); if (tracePath) fs.writeFileSync(tracePath, JSON.stringify({ t0: Date.now() - (performance.now() - t0), trace }));
    const wall = (performance.now() - t0) / 1000; const c = process.cpuUsage(cpu0);
    done({ lat, errors, lastError, wall, cpu_s: (c.user + c.system) / 1e6,
           loop_p99_ms: loop.percentile(99) / 1e6, loop_max_ms: loop.max / 1e6 }, () => { for (const s of sockets) s.close(); });
  }, 20);
}

if (A.worker) {
  const tracePath = process.env.STORM_TRACE ? process.env.STORM_TRACE + (A.procs > 1 ? `.${A.index}` : '') : '';
  const measure = () => storm(A.count, A.rate, (r, close) => {
    process.send(r, () => { process.once('message', () => { close(); setTimeout(() => process.exit(0), 300); }); });
  }, A.url, tracePath);
  // Warmed up (or not), say so and start when the parent says go: every worker together, and
  // the server's CPU counted from then on.
  const ready = () => { process.once('message', measure); process.send('ready'); };
  // A fresh node process runs its first thousand connects slowly (its JIT is cold), and that
  // would be charged to the server; --warmup opens and closes that many first, unmeasured.
  if (A.warmup > 0) storm(A.warmup, A.rate, (r, close) => { close(); setTimeout(ready, 500); }, A['warmup-url'] || A.url);
  else ready();
} else {
  const pid = Number(A['server-pid']) || 0;
  const ticks = () => {
    if (!pid) return NaN;
    try { const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' '); return +f[11] + +f[12]; } catch { return NaN; }
  };
  const procs = Math.max(1, Math.floor(A.procs)); let ticks0 = NaN; let t0 = 0; let ready = 0;
  const parts = []; const workers = [];
  const finish = () => {
    const wall = (performance.now() - t0) / 1000;
    const cpu = (ticks() - ticks0) / 100;
    const lat = parts.flatMap((p) => p.lat).sort((a, b) => a - b);
    const errors = parts.reduce((n, p) => n + p.errors, 0);
    const lastError = parts.map((p) => p.lastError).filter(Boolean).pop() || '';
    const r1 = (x) => Math.round(10 * x) / 10;
    const pct = (q) => (lat.length ? r1(lat[Math.min(lat.length - 1, Math.floor(q * lat.length))]) : null);
    const out = {
      label: A.label, mode: 'connect', count: A.count, rate: A.rate, procs, connected: lat.length, connect_errors: errors,
      last_error: lastError || undefined, p50_ms: pct(0.5), p99_ms: pct(0.99), max_ms: pct(1), wall_s: r1(wall),
      server_cpu_s: Math.round(cpu * 100) / 100,
      client_cpu_pct: Math.round((100 * parts.reduce((n, p) => n + p.cpu_s, 0)) / wall),
      client_loop_delay_p99_ms: r1(Math.max(...parts.map((p) => p.loop_p99_ms))),
      client_loop_delay_max_ms: r1(Math.max(...parts.map((p) => p.loop_max_ms))),
    };
    console.log(`[${A.label}] connect storm: ${out.connected}/${A.count} at ${A.rate}/s, errors ${errors} ${lastError} ` +
      `p50 ${out.p50_ms} p99 ${out.p99_ms} max ${out.max_ms} ms, server CPU ${out.server_cpu_s} s; ` +
      `clients (${procs} process${procs > 1 ? 'es' : ''}): ${out.client_cpu_pct}% of a core, ` +
      `worst event-loop delay p99 ${out.client_loop_delay_p99_ms} max ${out.client_loop_delay_max_ms} ms`);
    if (A.json) fs.appendFileSync(A.json, JSON.stringify(out) + '\n');
    for (const w of workers) w.send('close');
    setTimeout(() => process.exit(0), 500);
  };
  for (let i = 0; i < procs; i++) {
    const share = Math.floor(A.count / procs) + (i < A.count % procs ? 1 : 0);
    const args = ['--url', A.url, '--count', String(share), '--rate', String(A.rate / procs), '--worker', '1', '--index', String(i), '--procs', String(procs), '--warmup', String(Math.ceil(A.warmup / procs)), '--warmup-url', A['warmup-url'],
                  '--max-time', String(A['max-time'])];
    const w = fork(__filename, args, { env: process.env });
    workers.push(w);
    w.on('message', (r) => {
      if (r === 'ready') {
        if (++ready === procs) { ticks0 = ticks(); t0 = performance.now(); for (const x of workers) x.send('go'); }
        return;
      }
      parts.push(r); if (parts.length === procs) finish();
    });
    w.once('exit', (code) => { if (code && parts.length < procs) { console.error(`worker exited ${code}`); process.exit(1); } });
  }
}
