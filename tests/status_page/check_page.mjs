// Opens the node's status page (molsub/web) in Debian's headless chromium and does what an admin
// does: finds the failed unit and its reason, filters by "failed", waits for one automatic
// refresh, presses Retry without a token and then with it. Prints one JSON line on stdout with
// what it saw; it asserts nothing (tests/test_status_page_browser.py decides). Every wait is
// bounded; a step that times out is recorded in `timeouts`, not fatal.
//   node check_page.mjs --base URL --failed UNIT --token TOKEN --out DIR [--timeout-ms N]
// env: PLAYWRIGHT_CORE (path of playwright-core's index.mjs), CHROMIUM (the browser binary).
import { join } from 'node:path';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), [])
);
const deadline = Date.now() + Number(args['timeout-ms'] || 90000);
const left = (capMs) => Math.max(1000, Math.min(capMs, deadline - Date.now()));
const { chromium } = await import(process.env.PLAYWRIGHT_CORE || 'playwright-core');

const result = {
  console: [], // console messages of type error or warning: {type, text, location}
  pageErrors: [],
  failedRequests: [],
  screenshots: [],
  timeouts: [],
};

async function step(name, fn) {
  try {
    return await fn();
  } catch (err) {
    result.timeouts.push(`${name}: ${String(err?.message || err).split('\n')[0]}`);
    return null;
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
});
try {
  const page = await (await browser.newContext({ viewport: { width: 1500, height: 900 } })).newPage();
  page.on('console', (msg) => {
    if (msg.type() === 'error' || msg.type() === 'warning') {
      const loc = msg.location();
      result.console.push({ type: msg.type(), text: msg.text().slice(0, 2000), location: loc?.url ? `${loc.url}:${loc.lineNumber}` : '' });
    }
  });
  page.on('pageerror', (err) => result.pageErrors.push(String(err?.stack || err).slice(0, 2000)));
  page.on('requestfailed', (req) => result.failedRequests.push({ url: req.url(), error: req.failure()?.errorText || '' }));
  page.on('response', (res) => {
    // The refused retry's 401 is the answer under test, not a failure of the page.
    if (res.status() >= 400 && !res.url().includes('/api/units/')) result.failedRequests.push({ url: res.url(), status: res.status() });
  });

  const failedRow = `tr.unit[data-unit="${args.failed}"]`;
  await page.goto(args.base + '/', { waitUntil: 'load', timeout: left(30000) });
  result.title = await page.title();
  result.ruo = await step('research-use notice', () => page.locator('#ruo').innerText({ timeout: left(5000) }));
  result.failedRow = await step('failed row', async () => {
    const row = page.locator(failedRow);
    await row.waitFor({ timeout: left(10000) });
    return { state: await row.getAttribute('data-state'), reason: await row.locator('td.reason').innerText() };
  });
  result.statesAll = await page.locator('tr.unit').evaluateAll((rows) => rows.map((r) => r.dataset.state));
  const shot = join(args.out, 'status-page.png');
  await page.screenshot({ path: shot, fullPage: true });
  result.screenshots.push(shot);

  // The filter: a link; the page that opens lists failed units only and keeps ?state=failed.
  await step('filter failed', async () => {
    await Promise.all([
      page.waitForURL(/[?&]state=failed/, { timeout: left(10000) }),
      page.locator('a.filter[data-state="failed"]').click({ timeout: left(5000) }),
    ]);
    await page.locator(failedRow).waitFor({ timeout: left(10000) });
  });
  result.filteredUrl = page.url();
  result.statesFiltered = await page.locator('tr.unit').evaluateAll((rows) => rows.map((r) => r.dataset.state));

  // One automatic refresh: the "last updated" stamp (server time, seconds) changes, the
  // filter is kept.
  result.updatedBefore = await page.locator('#updated').innerText();
  result.updatedAfter = await step('automatic refresh', async () => {
    const before = result.updatedBefore;
    await page.waitForFunction(
      (b) => document.getElementById('updated')?.textContent !== b && Number(document.body.dataset.refreshes || 0) > 0,
      before,
      { timeout: left(30000), polling: 250 }
    );
    return page.locator('#updated').innerText();
  });
  result.refreshes = await page.evaluate(() => Number(document.body.dataset.refreshes || 0));
  result.statesAfterRefresh = await page.locator('tr.unit').evaluateAll((rows) => rows.map((r) => r.dataset.state));

  // Retry without a token: refused; with it: accepted.
  const retry = `button.act[data-action="retry"][data-unit="${args.failed}"]`;
  result.withoutToken = await step('retry without token', async () => {
    await page.locator('#token').fill('');
    await page.locator(retry).click({ timeout: left(10000) });
    await page.waitForFunction(() => /refused|failed/.test(document.getElementById('action-result').textContent), null, { timeout: left(10000) });
    return page.locator('#action-result').innerText();
  });
  result.withToken = await step('retry with token', async () => {
    await page.locator('#token').fill(args.token);
    await page.locator(retry).click({ timeout: left(10000) });
    await page.waitForFunction(() => /accepted/.test(document.getElementById('action-result').textContent), null, { timeout: left(10000) });
    return page.locator('#action-result').innerText();
  });
  result.tokenKept = await page.evaluate(() => sessionStorage.getItem('molsub-status-token') !== null);
  const after = join(args.out, 'status-page-after-retry.png');
  await page.screenshot({ path: after, fullPage: true });
  result.screenshots.push(after);
} catch (err) {
  result.fatal = String(err?.stack || err).slice(0, 2000);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + '\n');
