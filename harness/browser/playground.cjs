// Drives the playground page in a real, headless Chromium whose microphone plays a WAV file,
// the way a person at a laptop would use it, and prints what the page saw as one JSON line.
// harness/tests/browser.rs runs it; by hand:
//
//   node harness/browser/playground.cjs --url http://127.0.0.1:8080 --token TOKEN \
//     --wav /abs/question.wav [--screenshot out.png] [--timeout-ms 60000]
//
// playwright-core (scripts/install.sh puts it under ~/.cache/grokcast/node) drives the
// installed Chromium (GROKCAST_CHROMIUM, default /usr/bin/chromium) and downloads nothing.
"use strict";

const path = require("path");

function args() {
  const out = { timeoutMs: 60000 };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    out[key] = argv[i + 1];
  }
  for (const need of ["url", "token", "wav"]) {
    if (!out[need]) throw new Error(`--${need} is required`);
  }
  out.timeoutMs = Number(out.timeoutMs);
  return out;
}

function playwright() {
  const cache = process.env.XDG_CACHE_HOME || path.join(process.env.HOME || "/root", ".cache");
  const candidates = [
    process.env.GROKCAST_PLAYWRIGHT_CORE,
    path.join(cache, "grokcast", "node", "node_modules", "playwright-core"),
    "playwright-core",
  ].filter(Boolean);
  for (const c of candidates) {
    try {
      return require(c);
    } catch (e) {
      if (e.code !== "MODULE_NOT_FOUND") throw e;
    }
  }
  throw new Error("playwright-core is not installed (scripts/install.sh)");
}

async function main() {
  const a = args();
  const { chromium } = playwright();
  const flags = [
    // A microphone that plays the WAV once, and no permission prompt for it.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    `--use-file-for-fake-audio-capture=${a.wav}%noloop`,
    // The agent's voice may play without a click first.
    "--autoplay-policy=no-user-gesture-required",
  ];
  // Chromium's sandbox cannot start as root (CI containers run as root).
  if (process.getuid && process.getuid() === 0) flags.push("--no-sandbox");
  const browser = await chromium.launch({
    executablePath: process.env.GROKCAST_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: flags,
  });
  const seen = { console: [] };
  try {
    const context = await browser.newContext({
      permissions: ["microphone"],
      viewport: { width: 1280, height: 720 },
    });
    const page = await context.newPage();
    page.on("console", (m) => seen.console.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => seen.console.push(`pageerror: ${e.message}`));
    await page.goto(`${a.url}/playground#token=${encodeURIComponent(a.token)}`);
    if (a.prompt) await page.fill("#prompt", a.prompt);
    await page.click("#call");
    // Done when the agent has answered and been interrupted, or the session ended.
    await page
      .waitForFunction(
        () => {
          const g = window.grokcast;
          return g.closed || g.errors.length > 0 || (g.agent.length >= 2 && g.played > 0 && g.bargeIns > 0);
        },
        null,
        { timeout: a.timeoutMs, polling: 100 },
      )
      .catch(() => {});
    // Let the rest of the answer's words and figures arrive.
    await page.waitForTimeout(1000);
    if (a.screenshot) await page.screenshot({ path: a.screenshot, fullPage: true });
    Object.assign(seen, await page.evaluate(() => window.grokcast));
    seen.transcript = await page.evaluate(() => document.getElementById("transcript").innerText);
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(seen) + "\n");
}

main().catch((e) => {
  process.stderr.write(`playground.cjs: ${e.stack || e}\n`);
  process.exit(1);
});
