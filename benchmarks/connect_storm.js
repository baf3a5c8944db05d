// Connect storm: open N websocket clients at a fixed rate, time each one from io() to 'connect'.
//   node connect_storm.js --url http://127.0.0.1:8000 --count 10000 --rate 1000 --server-pid 1234 [--json FILE]
// Prints and (with --json) appends one JSON line: connected, errors, p50/p99/max connect ms, server CPU.
// Uses socket.io-client from BENCH_NODE_MODULES (the peer kit's install), like the kit's loadgen.
const fs = require('fs');
const { performance } = require('perf_hooks');
if (process.env.BENCH_NODE_MODULES) module.paths.push(process.env.BENCH_NODE_MODULES);
const { io } = require('socket.io-client');

const A = { url: 'http://127.0.0.1:8000', count: 10000, rate: 1000, 'server-pid': '', json: '', label: '', 'max-time': 120 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const k = argv[i].replace(/^--/, '');
  if (!(k in A)) { console.error(`unknown option --${k}`); process.exit(2); }
  A[k] = typeof A[k] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
}
setTimeout(() => { console.error('hard time limit hit'); process.exit(3); }, A['max-time'] * 1000).unref();
const pid = Number(A['server-pid']) || 0;
const ticks = () => {
  if (!pid) return NaN;
  try { const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' '); return +f[11] + +f[12]; } catch { return NaN; }
};

const lat = []; const sockets = []; let errors = 0; let lastError = ''; let started = 0; let settled = 0;
const t0 = performance.now(); const ticks0 = ticks();
function openOne() {
  const t = performance.now();
  const s = io(A.url, { transports: ['websocket'], forceNew: true, reconnection: false, timeout: 20000 });
  sockets.push(s);
  s.once('connect', () => { lat.push(performance.now() - t); settled++; });
  s.once('connect_error', (e) => { errors++; lastError = String(e.message || e); settled++; });
}
const timer = setInterval(() => {
  const due = Math.min(A.count, Math.floor(((performance.now() - t0) / 1000) * A.rate) + 1);
  while (started < due) { started++; openOne(); }
  if (started >= A.count) clearInterval(timer);
}, 2);
const check = setInterval(() => {
  if (settled < A.count) return;
  clearInterval(check);
  const wall = (performance.now() - t0) / 1000;
  const cpu = (ticks() - ticks0) / 100;
  lat.sort((a, b) => a - b);
  const pct = (q) => (lat.length ? Math.round(10 * lat[Math.min(lat.length - 1, Math.floor(q * lat.length))]) / 10 : null);
  const out = {
    label: A.label, mode: 'connect', count: A.count, rate: A.rate, connected: lat.length, connect_errors: errors,
    last_error: lastError || undefined, p50_ms: pct(0.5), p99_ms: pct(0.99), max_ms: pct(1), wall_s: Math.round(wall * 10) / 10,
    server_cpu_s: Math.round(cpu * 100) / 100,
  };
  console.log(`[${A.label}] connect storm: ${out.connected}/${A.count} at ${A.rate}/s, errors ${errors} ${lastError} ` +
    `p50 ${out.p50_ms} p99 ${out.p99_ms} max ${out.max_ms} ms, server CPU ${out.server_cpu_s} s`);
  if (A.json) fs.appendFileSync(A.json, JSON.stringify(out) + '\n');
  for (const s of sockets) s.close();
  setTimeout(() => process.exit(0), 300);
}, 20);
