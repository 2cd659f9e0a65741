// What every scenario script shares: the scenario's name, a deadline, and the three ways a
// scenario ends. tests/common/mod.rs (`run_node`) reads the "ok {json}" line.
export const [scenario] = process.argv.slice(2);

const deadline = setTimeout(() => fail(`scenario ${scenario} did not finish in 30 s`), 30_000);

export function fail(why) {
  console.log(`FAILED ${scenario}: ${why}`);
  process.exit(1);
}

export function check(condition, why) {
  if (!condition) fail(why);
}

export function done(summary) {
  clearTimeout(deadline);
  console.log("ok " + JSON.stringify(summary));
  process.exit(0);
}

/** Run `scenarios[scenario]`, or fail naming the ones there are. */
export function run(scenarios) {
  const chosen = scenarios[scenario];
  if (!chosen) fail(`no scenario ${scenario}; try one of ${Object.keys(scenarios).join(", ")}`);
  chosen().catch((e) => fail(e.stack || e));
}
