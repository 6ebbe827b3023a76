// Opens one study in OHIF (served by tests/ohif_viewer.py) in Debian's headless chromium and
// prints what a reader would see, as one JSON line on stdout: the thumbnails, the SR's
// measurements (panel text, annotation SVG, coloured pixels over the greyscale MG), the SC's
// pixels, the heatmap SEG's load, every console error / page error / failed request, and the
// screenshots it saved. It asserts nothing: tests/test_ohif_viewer.py decides. Every wait is
// bounded; a step that times out is recorded, not fatal.
//   node open_study.mjs --base URL --study UID --out DIR [--steps sr,sc,seg] [--seg REGEX]
//     [--timeout-ms N]
// env: PLAYWRIGHT_CORE (path of playwright-core's index.mjs), CHROMIUM (the browser binary).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), [])
);
const base = args.base;
const study = args.study;
const out = args.out;
const segMatch = new RegExp(args.seg || '.', 'i'); // which SEG thumbnails to load (their text)
const steps = new Set((args.steps && args.steps !== 'all' ? args.steps : 'sr,sc,seg').split(','));
const deadline = Date.now() + Number(args['timeout-ms'] || 180000);
const { chromium } = await import(process.env.PLAYWRIGHT_CORE || 'playwright-core');

const result = {
  url: `${base}/viewer?StudyInstanceUIDs=${study}`,
  console: [], // every console message of type error or warning: {type, text, location}
  pageErrors: [], // uncaught exceptions
  failedRequests: [], // network failures and HTTP >= 400
  screenshots: [],
  steps: {},
  timeouts: [],
};

const left = (capMs) => Math.max(1000, Math.min(capMs, deadline - Date.now()));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // Software WebGL (no GPU in CI): Cornerstone needs WebGL2 for the MG.
  args: ['--no-sandbox', '--use-gl=angle', '--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({ viewport: { width: 1600, height: 1000 }, deviceScaleFactor: 1 });
// A returning user: OHIF's onboarding tour (a modal overlay over everything) already seen.
await context.addInitScript(() => localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])));
const page = await context.newPage();
page.on('console', (msg) => {
  if (msg.type() === 'error' || msg.type() === 'warning') {
    const loc = msg.location();
    result.console.push({ type: msg.type(), text: msg.text().slice(0, 2000), location: loc?.url ? `${loc.url}:${loc.lineNumber}` : '' });
  }
});
page.on('pageerror', (err) => result.pageErrors.push(String(err?.stack || err).slice(0, 2000)));
page.on('requestfailed', (req) => result.failedRequests.push({ url: req.url(), error: req.failure()?.errorText || '' }));
page.on('response', (res) => {
  if (res.status() >= 400) result.failedRequests.push({ url: res.url(), status: res.status() });
});

async function shot(name, target = page) {
  const path = join(out, `${String(result.screenshots.length + 1).padStart(2, '0')}-${name}.png`);
  try {
    await target.screenshot({ path, timeout: left(20000) });
    result.screenshots.push(path);
    return path;
  } catch (e) {
    result.timeouts.push(`screenshot ${name}: ${e.message.split('\n')[0]}`);
    return null;
  }
}

// Pixel statistics of a PNG (a screenshot), decoded by the browser itself on a blank page:
// lit = not (near) black; coloured = clearly not grey (annotations and heatmaps are coloured,
// the MG is greyscale).
const pixelPage = await context.newPage();
async function pixelStats(png) {
  if (!png) return null;
  const b64 = png.toString('base64');
  return pixelPage.evaluate(async (data) => {
    const img = new Image();
    img.src = `data:image/png;base64,${data}`;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.width;
    c.height = img.height;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const px = g.getImageData(0, 0, c.width, c.height).data;
    let lit = 0, coloured = 0;
    for (let i = 0; i < px.length; i += 4) {
      const [r, gr, b] = [px[i], px[i + 1], px[i + 2]];
      if (r + gr + b > 60) lit++;
      if (Math.max(r, gr, b) - Math.min(r, gr, b) > 60) coloured++;
    }
    return { width: c.width, height: c.height, lit, coloured };
  }, b64);
}

// The first (active) viewport's pane: its screenshot, its SVG annotation layer, its overlay text.
const pane = () => page.locator('[data-cy="viewport-pane"]').first();
async function viewportState(name) {
  const state = { screenshot: null, pixels: null, svg: null, overlayText: '' };
  try {
    const png = await pane().screenshot({ timeout: left(20000) });
    state.screenshot = join(out, `${String(result.screenshots.length + 1).padStart(2, '0')}-${name}-viewport.png`);
    writeFileSync(state.screenshot, png);
    result.screenshots.push(state.screenshot);
    state.pixels = await pixelStats(png);
  } catch (e) {
    result.timeouts.push(`viewport screenshot ${name}: ${e.message.split('\n')[0]}`);
  }
  state.svg = await pane().evaluate((el) => {
    const svg = el.querySelector('svg.svg-layer');
    if (!svg) return null;
    return {
      shapes: svg.querySelectorAll('path, polyline, polygon, line, circle, ellipse, rect').length,
      annotationUIDs: [...new Set([...svg.querySelectorAll('[data-annotation-uid]')].map((n) => n.getAttribute('data-annotation-uid')))],
      text: [...svg.querySelectorAll('text')].map((t) => t.textContent).join(' | '),
    };
  }).catch(() => null);
  state.overlayText = await pane().innerText({ timeout: 2000 }).catch(() => '');
  return state;
}

async function thumbnails() {
  return page.locator('[data-cy^="study-browser-thumbnail"]').evaluateAll((nodes) =>
    nodes.map((n, index) => ({
      index,
      modality: n.querySelector('[data-cy="series-modality-label"]')?.textContent?.trim() || '',
      description: n.querySelector('[data-cy="series-description-label"]')?.textContent?.trim() || '',
      text: n.innerText.replace(/\s+/g, ' ').trim(),
    }))
  ).catch(() => []);
}

async function openThumbnail(match) {
  const all = await thumbnails();
  const hit = all.find(match);
  if (!hit) return null;
  await page.locator('[data-cy^="study-browser-thumbnail"]').nth(hit.index).dblclick({ timeout: left(15000) });
  return hit;
}

async function waitQuiet(ms = 2500) {
  // No network-idle event in a SPA that polls: wait for 'networkidle' briefly, then settle.
  await page.waitForLoadState('networkidle', { timeout: left(15000) }).catch(() => {});
  await sleep(Math.min(ms, Math.max(0, deadline - Date.now())));
}

async function panelText() {
  // The right panel: Measurements (trackedMeasurements / measurements) or Segmentation.
  return page.evaluate(() => {
    const sel = ['[data-cy="trackedMeasurements-panel"]', '[data-cy="measurements-panel"]', '#viewer-right-panel', '[data-cy="side-panel-header-right"]'];
    const parts = [];
    for (const s of sel) for (const n of document.querySelectorAll(s)) parts.push(n.innerText);
    return parts.join('\n').replace(/[ \t]+/g, ' ');
  }).catch(() => '');
}

async function notifications() {
  return page.evaluate(() =>
    [...document.querySelectorAll('[data-sonner-toast], [role="status"], [role="alert"], .sonner-toast')].map((n) => n.innerText.replace(/\s+/g, ' ').trim()).filter(Boolean)
  ).catch(() => []);
}

try {
  await page.goto(result.url, { timeout: left(60000), waitUntil: 'domcontentloaded' });
  try {
    await page.locator('[data-cy^="study-browser-thumbnail"]').first().waitFor({ timeout: left(60000) });
    await page.locator('[data-cy="viewport-pane"] canvas').first().waitFor({ timeout: left(30000) });
  } catch (e) {
    result.timeouts.push(`study load: ${e.message.split('\n')[0]}`);
  }
  await waitQuiet(4000);
  result.thumbnails = await thumbnails();
  await shot('study');
  result.steps.initial = await viewportState('initial');

  // MG alone: the un-hydrated baseline the SR view is compared with.
  const mg = await openThumbnail((t) => t.modality === 'MG');
  if (mg) {
    await waitQuiet();
    result.steps.mg = { thumbnail: mg, ...(await viewportState('mg')) };
  }

  if (steps.has('sr')) {
    const sr = await openThumbnail((t) => t.modality === 'SR');
    const step = (result.steps.sr = { thumbnail: sr });
    if (sr) {
      await waitQuiet(4000);
      step.loadBadge = await page.locator('[data-cy^="ModalityLoadBadge-"]').first().innerText({ timeout: 2000 }).catch(() => '');
      Object.assign(step, await viewportState('sr'));
      // A rehydratable SR offers LOAD in its badge: that puts its measurements in OHIF's
      // measurement service (the panel lists them) and draws them as tools on the MG.
      // OHIF 3.12 shows the badge (an untracked-status icon and "SR") itself as the button.
      const badge = page.locator('[data-cy^="ModalityLoadBadge-"]').first();
      const withText = badge.getByText(/load/i).first();
      const srLoad = (await withText.isVisible().catch(() => false)) ? withText : badge;
      step.loadButton = await srLoad.isVisible().catch(() => false);
      if (step.loadButton) {
        await srLoad.click({ timeout: left(10000) }).catch((e) => result.timeouts.push(`SR load: ${e.message.split('\n')[0]}`));
        await waitQuiet(4000);
        step.notificationsAfterLoad = await notifications();
        step.hydrated = await viewportState('sr-loaded');
      }
      // The right panel may start collapsed: open its Measurements tab (bounded, optional).
      if (!(await panelText()).trim()) {
        await page.locator('[data-cy="trackedMeasurements-btn"], [data-cy="measurements-btn"]').first()
          .click({ timeout: left(5000) }).catch(() => {});
        await sleep(1500);
      }
      step.panelText = await panelText();
      step.bodyText = (await page.locator('body').innerText({ timeout: 5000 }).catch(() => '')).replace(/[ \t]+/g, ' ');
      step.notifications = await notifications();
      await shot('sr');
    }
  }

  if (steps.has('sc')) {
    const sc = await openThumbnail((t) => t.modality === 'OT' || t.modality === 'SC');
    const step = (result.steps.sc = { thumbnail: sc });
    if (sc) {
      await waitQuiet();
      Object.assign(step, await viewportState('sc'));
      await shot('sc');
    }
  }

  if (steps.has('seg')) {
    // The SEGs whose thumbnail text matches --seg (the heatmaps: the lesion SEG is an input).
    const segs = (await thumbnails()).filter((t) => t.modality === 'SEG' && segMatch.test(t.text));
    result.steps.seg = { thumbnails: segs, loads: [] };
    for (const s of segs) {
      const entry = { thumbnail: s };
      await page.locator('[data-cy^="study-browser-thumbnail"]').nth(s.index).dblclick({ timeout: left(15000) });
      await waitQuiet(3000);
      const load = page.locator('[data-cy^="ModalityLoadBadge-"]').getByText(/load/i).first();
      entry.loadButton = await load.isVisible().catch(() => false);
      if (entry.loadButton) {
        await load.click({ timeout: left(10000) }).catch((e) => result.timeouts.push(`SEG load: ${e.message.split('\n')[0]}`));
        await waitQuiet(4000);
      }
      entry.notifications = await notifications();
      entry.panelText = await page.evaluate(() => document.body.innerText.replace(/[ \t]+/g, ' ')).catch(() => '');
      Object.assign(entry, await viewportState(`seg-${s.index}`));
      await shot(`seg-${s.index}`);
      result.steps.seg.loads.push(entry);
    }
  }
} catch (e) {
  result.fatal = String(e?.stack || e).slice(0, 3000);
  await shot('fatal');
} finally {
  await browser.close().catch(() => {});
}
process.stdout.write(JSON.stringify(result) + '\n');
