// What the scenario scripts (scenario.mjs, recovery.mjs) share: the failure type their
// checks throw, and the runner that prints a scenario's result for the Python test to assert.

/** A scenario's own failure (something did not arrive): its message says it all. */
export class Expected extends Error {}

/**
 * Run `scenarios[name]` within `totalMs`, print its result as one JSON line, then say goodbye
 * on every socket (a polling client's goodbye is an HTTP request still to be made) and let the
 * process end by itself; the unref'd timer only bounds a straggler. `fail(message)` reports
 * and exits.
 */
export async function runScenario(scenarios, name, { fail, sockets, totalMs }) {
  const scenario = scenarios[name];
  if (!scenario) fail(`unknown scenario; expected one of ${Object.keys(scenarios).join(", ")}`);
  const overall = setTimeout(() => fail(`still running after ${totalMs} ms`), totalMs);
  let result;
  try {
    result = await scenario();
  } catch (err) {
    fail(err instanceof Expected ? err.message : (err?.stack ?? String(err)));
  }
  clearTimeout(overall);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  for (const s of sockets) s.disconnect();
  setTimeout(() => {
    process.stderr.write("note: a connection was still open 2 s after disconnect()\n");
    process.exit(0);
  }, 2000).unref();
}
