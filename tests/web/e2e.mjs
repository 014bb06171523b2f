// The web client and the operator console in a real headless Chromium,
// against a real server that tests/web.rs started. Prints one "ok - ..."
// line per scenario; any failed check throws, and the process exits 1.
//
// Environment (set by tests/web.rs):
//   EPHEMERA_URL          the public listener, http://127.0.0.1:PORT
//   EPHEMERA_ADMIN_URL    the admin listener
//   EPHEMERA_ADMIN_TOKEN  the admin token (typed into the console)
//   SCREENSHOT_DIR        where the screenshots go
//   SECRETS_FILE          where to write the tokens and canary texts the
//                         server must never log (tests/web.rs checks)
//   CHROMIUM              the browser (default /usr/bin/chromium)

import { chromium } from "playwright-core";
import { writeFileSync, mkdirSync } from "node:fs";
import { deflateSync } from "node:zlib";
import { randomBytes } from "node:crypto";
import { join } from "node:path";

const BASE = must("EPHEMERA_URL");
const ADMIN = must("EPHEMERA_ADMIN_URL");
const ADMIN_TOKEN = must("EPHEMERA_ADMIN_TOKEN");
const SHOTS = must("SCREENSHOT_DIR");
const SECRETS = must("SECRETS_FILE");
const PASSWORD = "correct horse battery staple";
const canary = (tag) => `${tag}-${randomBytes(6).toString("hex")}`;

function must(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

// A solid-colour PNG, made here so the test knows what the decrypted
// image must show.
function png(w, h, [r, g, b]) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const x of buf) c = crcTable[(c ^ x) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array.from({ length: w }, () => [r, g, b]).flat())]);
  const raw = Buffer.concat(Array.from({ length: h }, () => row));
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

// Polls `fn` (async, truthy when done) until `ms` have passed.
async function until(fn, ms, what) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms: ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

// WCAG contrast of an element's text against the first opaque background
// up its ancestors (white when none).
async function contrast(page, selector) {
  return page.locator(selector).first().evaluate((e) => {
    const rgb = (c) => (c.match(/[\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => {
      const f = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const fg = rgb(getComputedStyle(e).color);
    let bg = [255, 255, 255];
    for (let n = e; n; n = n.parentElement) {
      const c = rgb(getComputedStyle(n).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] === 1)) {
        bg = c.slice(0, 3);
        break;
      }
    }
    const [l1, l2] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    return (l1 + 0.05) / (l2 + 0.05);
  });
}

// The colour of the middle pixel of the viewer's image, read back from a
// canvas: proof the page decrypted the right bytes.
async function viewerPixel(page) {
  return page.evaluate(async () => {
    const img = document.getElementById("viewer-img");
    if (!img.src || !img.complete || img.naturalWidth === 0) return null;
    const c = document.createElement("canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(Math.floor(c.width / 2), Math.floor(c.height / 2), 1, 1).data;
    return [d[0], d[1], d[2]];
  });
}

async function signUp(page, name, register) {
  await page.goto(BASE + "/");
  await page.getByLabel("Username").fill(name);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: register ? "Register" : "Log in" }).click();
  await page.locator("#my-id").filter({ hasText: /.+/ }).waitFor({ timeout: 10000 });
  await until(async () => (await page.locator("#conn").textContent()) === "Connected", 10000, `${name} connected`);
  return (await page.locator("#my-id").textContent()).trim();
}

const msg = (page, text) => page.locator("#messages li.msg", { hasText: text });
const convButton = (page, id) => page.locator(`#convs button.conv[data-conversation-id="${id}"]`);

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const secrets = [];
  const failures = [];
  const viewport = { width: 1100, height: 900 };
  try {
    const ctxA = await browser.newContext({ viewport });
    const ctxB = await browser.newContext({ viewport });
    const a = await ctxA.newPage();
    const b1 = await ctxB.newPage();
    for (const [who, p] of [["alice", a], ["bob", b1]]) {
      p.on("pageerror", (e) => failures.push(`${who}: page error: ${e.message}`));
      p.on("console", (m) => m.type() === "error" && failures.push(`${who}: console error: ${m.text()}`));
      // The path only: a query may hold a token.
      p.on("response", (r) => r.status() >= 400 && failures.push(`${who}: ${r.status()} from ${new URL(r.url()).pathname}`));
    }

    // ---------------------------------------------------------- sign up
    await a.goto(BASE + "/");
    await shot(a, "01-sign-in");
    const aliceId = await signUp(a, "alice", true);
    const bobId = await signUp(b1, "bob", true);
    // The second tab of the recipient: the same browser context, its own
    // login (one tab, one device).
    const b2 = await ctxB.newPage();
    b2.on("pageerror", (e) => failures.push(`bob tab 2: page error: ${e.message}`));
    check((await signUp(b2, "bob", false)) === bobId, "bob's second tab is bob");
    console.log("ok - register, log in, a second tab of the recipient");
    // The client's table of frame handlers, for tests/web.rs to hold
    // against the server messages of schema/asyncapi.json.
    console.log(`handled: ${(await a.evaluate(() => window.ephemera.handledFrames)).join(",")}`);

    // ------------------------------------ chat, unread, receipts, typing
    const hello = canary("hello");
    await a.getByLabel("Start a chat: their user id").fill(bobId);
    await a.getByRole("button", { name: "Open chat" }).click();
    await a.getByLabel("Message", { exact: true }).fill(hello);
    await a.getByLabel("Message", { exact: true }).press("Enter");
    await msg(a, hello).locator('[data-receipt="sent"], [data-receipt="delivered"], [data-receipt="read"]').waitFor({ timeout: 10000 });
    const conv = await until(async () => a.locator("#chat").getAttribute("data-conversation-id"), 5000, "the chat knows its conversation");
    for (const p of [b1, b2]) {
      await until(async () => (await convButton(p, conv).getAttribute("data-unread")) === "1", 10000, "bob sees 1 unread");
    }
    await shot(b1, "02-unread");
    check((await contrast(b1, "#convs .badge")) >= 4.5, "contrast of the unread badge");
    await until(async () => (await msg(a, hello).locator(".receipt").getAttribute("data-receipt")) === "delivered", 10000, "delivered receipt");
    await convButton(b1, conv).click();
    await msg(b1, hello).waitFor({ timeout: 10000 });
    await until(async () => (await convButton(b1, conv).getAttribute("data-unread")) === "0", 5000, "unread cleared when read");
    await until(async () => (await msg(a, hello).locator(".receipt").getAttribute("data-receipt")) === "read", 10000, "read receipt");
    await convButton(b2, conv).click();
    await msg(b2, hello).waitFor({ timeout: 10000 });
    // Typing: bob types, alice sees it.
    await b1.getByLabel("Message", { exact: true }).pressSequentially("typ", { delay: 50 });
    await until(async () => /bob is typing/.test(await a.locator("#typing").textContent()), 5000, "alice sees bob typing");
    await b1.getByLabel("Message", { exact: true }).fill("");
    // A screenshot notice: the PrintScreen key on bob's page.
    await b1.keyboard.press("PrintScreen");
    await msg(a, hello).locator(".shot", { hasText: "bob took a screenshot" }).waitFor({ timeout: 5000 });
    for (const [page, sel] of [[b1, "#messages .msg .body"], [b1, "#messages .msg .meta"], [a, "#messages .msg .shot"], [b1, "#send"], [b1, "small"]]) {
      const ratio = await contrast(page, sel);
      check(ratio >= 4.5, `contrast of ${sel} is ${ratio.toFixed(2)}, at least 4.5`);
    }
    console.log("ok - chat: unread count, history, delivered and read receipts, typing, screenshot notice, contrast");

    // ----------------------------------------- resume with sync, presence
    await a.evaluate(() => window.ephemera.dropSocket(2500));
    await until(async () => (await a.locator("#conn").getAttribute("data-state")) === "offline", 3000, "alice offline");
    const away = canary("while-away");
    await b1.getByLabel("Message", { exact: true }).fill(away);
    await b1.getByLabel("Message", { exact: true }).press("Enter");
    await msg(b1, away).locator('[data-receipt="sent"]').waitFor({ timeout: 5000 });
    check((await msg(a, away).count()) === 0, "the dropped socket did not get the message live");
    await msg(a, away).waitFor({ timeout: 10000 });
    await until(async () => (await a.locator("#conn").textContent()) === "Connected", 5000, "alice resumed");
    await until(async () => (await a.locator("#chat-presence").textContent()) === "online", 5000, "alice sees bob online");
    // A reload keeps the tab's login and cursor: sync replays nothing old,
    // so the chat's earlier messages come from the history call.
    await a.reload();
    await until(async () => (await a.locator("#conn").textContent()) === "Connected", 10000, "alice back after a reload");
    await convButton(a, conv).click();
    await msg(a, hello).waitFor({ timeout: 10000 });
    await msg(a, away).waitFor({ timeout: 10000 });
    console.log("ok - reconnect and resume with sync; presence; history after a reload");

    // --------------------------------------------------- view-once photo
    const secretColour = [200, 30, 60];
    await a.getByLabel("View-once photo", { exact: true }).setInputFiles({ name: "secret.png", mimeType: "image/png", buffer: png(8, 8, secretColour) });
    await a.getByRole("button", { name: "Send view-once photo" }).click();
    const onceA = a.locator('#messages li.msg[data-policy="once"][data-state="live"]');
    await onceA.locator('[data-receipt="sent"], [data-receipt="delivered"], [data-receipt="read"]').waitFor({ timeout: 10000 });
    const onceId = await onceA.getAttribute("data-msg-id");
    const onceIn = (p) => p.locator(`#messages li.msg[data-msg-id="${onceId}"]`);
    for (const p of [b1, b2]) await onceIn(p).getByRole("button", { name: "Open view-once photo" }).waitFor({ timeout: 10000 });
    // By keyboard: focus the button and press Enter.
    await onceIn(b1).getByRole("button", { name: "Open view-once photo" }).focus();
    await b1.keyboard.press("Enter");
    await b1.locator("#viewer[open]").waitFor({ timeout: 10000 });
    const px = await until(() => viewerPixel(b1), 10000, "the view-once photo decrypts and shows");
    check(JSON.stringify(px) === JSON.stringify(secretColour), `the decrypted photo shows its colour (${px})`);
    await shot(b1, "03-view-once-open");
    for (const [who, p] of [["bob tab 1", b1], ["bob tab 2", b2], ["alice", a]]) {
      await until(async () => (await onceIn(p).getAttribute("data-state")) === "burned", 10000, `the photo burns in ${who}`);
      check((await onceIn(p).locator("button.open-once").count()) === 0, `no open button left in ${who}`);
      check((await onceIn(p).locator("img").count()) === 0, `no image left in ${who}'s list`);
    }
    await shot(b2, "04-view-once-burned-other-tab");
    await b1.getByRole("button", { name: "Close", exact: true }).click();
    await until(async () => (await b1.locator("#viewer-img").getAttribute("src")) === null, 3000, "the viewer drops the photo on close");
    console.log("ok - a view-once photo opens once for the recipient and burns in both of the recipient's tabs");

    // ------------------------------------------------------- short TTL
    const brief = canary("brief");
    await a.getByLabel("Lifetime").selectOption("5");
    await a.getByLabel("Message", { exact: true }).fill(brief);
    await a.getByLabel("Message", { exact: true }).press("Enter");
    const expires = Number(await until(async () => msg(a, brief).locator("time.countdown").getAttribute("data-expires"), 5000, "the countdown"));
    check(expires > Date.now() + 2500, "a 5 s message has time left");
    for (const p of [a, b1, b2]) await msg(p, brief).waitFor({ timeout: 3000 });
    const countdown = await msg(b1, brief).locator("time.countdown").textContent();
    check(/burns in [1-5] s/.test(countdown), `a visible countdown (${countdown})`);
    await shot(a, "05-timed-message");
    await new Promise((r) => setTimeout(r, Math.max(0, expires - Date.now() - 1500)));
    for (const p of [a, b1, b2]) check((await msg(p, brief).count()) === 1, "still shown just before its expiry");
    check(Date.now() < expires - 100, "the checks above ran before the expiry (a slow machine would void them)");
    for (const [who, p] of [["alice", a], ["bob tab 1", b1], ["bob tab 2", b2]]) {
      await until(async () => (await msg(p, brief).count()) === 0, 4000, `gone from ${who}'s screen at its expiry`);
    }
    check(Date.now() < expires + 4000, "gone within moments of its expiry");
    check((await msg(a, hello).count()) === 1, "the long-lived message is still there");
    console.log("ok - a 5-second message disappears from every screen at its expiry");

    // ------------------------------------------------------------ group
    const ctxC = await browser.newContext({ viewport });
    const c = await ctxC.newPage();
    const carolId = await signUp(c, "carol", true);
    await a.getByLabel("New group: member ids, comma separated").fill(`${bobId}, ${carolId}`);
    await a.getByLabel("Group name").fill("Trio");
    await a.getByRole("button", { name: "Create group" }).click();
    const group = await until(async () => {
      const id = await a.locator("#chat").getAttribute("data-conversation-id");
      return id && id !== conv ? id : null;
    }, 5000, "the group is open");
    const toGroup = canary("to-the-group");
    await a.getByLabel("Lifetime").selectOption("3600");
    await a.getByLabel("Message", { exact: true }).fill(toGroup);
    await a.getByLabel("Message", { exact: true }).press("Enter");
    for (const p of [b1, c]) {
      await convButton(p, group).waitFor({ timeout: 10000 });
      await convButton(p, group).click();
      await msg(p, toGroup).waitFor({ timeout: 10000 });
    }
    console.log("ok - a group of three");

    // ----------------------------------------------------------- stories
    // bob follows alice and carol; both post; bob's tray shows rings,
    // unviewed first; bob views alice's; alice sees bob among her viewers.
    await convButton(b1, conv).click();
    await b1.getByRole("button", { name: "Follow", exact: true }).click();
    await b1.getByRole("button", { name: "Following", exact: true }).waitFor({ timeout: 5000 });
    await b1.getByLabel("Start a chat: their user id").fill(carolId);
    await b1.getByRole("button", { name: "Open chat" }).click();
    await b1.getByRole("button", { name: "Follow", exact: true }).click();
    await b1.getByRole("button", { name: "Following", exact: true }).waitFor({ timeout: 5000 });
    const storyColour = [20, 140, 70];
    await a.getByLabel("Photo for a new story").setInputFiles({ name: "story.png", mimeType: "image/png", buffer: png(6, 6, storyColour) });
    await a.getByRole("button", { name: "Post story" }).click();
    const ring = (id) => b1.locator(`#tray button.ring[data-user-id="${id}"]`);
    await ring(aliceId).waitFor({ timeout: 10000 });
    await new Promise((r) => setTimeout(r, 20)); // carol's story is the newer
    await c.getByLabel("Photo for a new story").setInputFiles({ name: "c.png", mimeType: "image/png", buffer: png(4, 4, [90, 90, 200]) });
    await c.getByRole("button", { name: "Post story" }).click();
    await ring(carolId).waitFor({ timeout: 10000 });
    check((await ring(aliceId).getAttribute("data-unviewed")) === "true", "alice's ring is unviewed");
    await shot(b1, "06-story-tray");
    await ring(aliceId).click();
    await b1.locator("#viewer[open]").waitFor({ timeout: 10000 });
    const spx = await until(() => viewerPixel(b1), 10000, "the story decrypts and shows");
    check(JSON.stringify(spx) === JSON.stringify(storyColour), `the story shows its colour (${spx})`);
    await shot(b1, "07-story-view");
    await b1.keyboard.press("Escape"); // a dialog closes with Escape
    await until(async () => !(await b1.locator("#viewer").evaluate((d) => d.open)), 3000, "Escape closes the story");
    await until(async () => (await ring(aliceId).getAttribute("data-unviewed")) === "false", 10000, "alice's ring turns viewed");
    const order = await b1.locator("#tray button.ring").evaluateAll((els) => els.map((e) => e.dataset.userId));
    check(order.indexOf(carolId) < order.indexOf(aliceId), `unviewed first in the tray (${order})`);
    if (!(await a.locator("#my-stories-box").evaluate((d) => d.open))) await a.locator("#my-stories-box summary").click();
    // The list may be redrawn under the click: click until the viewers show.
    await until(async () => {
      await a.locator("#my-stories button.show-viewers").first().click({ timeout: 2000 });
      await a.locator(`#my-stories li.viewer[data-user-id="${bobId}"]`).waitFor({ timeout: 2000 });
      return true;
    }, 10000, "the author's viewer list shows bob");
    check(/^bob /.test(await a.locator(`#my-stories li.viewer[data-user-id="${bobId}"]`).textContent()), "the viewer list names bob");
    await shot(a, "08-my-story-viewers");
    console.log("ok - a story appears in the follower's tray (unviewed first) and the view shows in the author's viewer list");

    // ----------------------------------------------- operator console
    const ops = await (await browser.newContext({ viewport })).newPage();
    ops.on("pageerror", (e) => failures.push(`console: page error: ${e.message}`));
    await ops.goto(ADMIN + "/");
    // A wrong token opens nothing.
    await ops.getByLabel("Admin token").fill("not-the-token");
    await ops.getByRole("button", { name: "Open the console" }).click();
    await until(async () => /refused/.test(await ops.locator("#alert").textContent()), 5000, "a wrong admin token is refused");
    check(await ops.locator("#console").isHidden(), "the console stays closed");
    await ops.getByLabel("Admin token").fill(ADMIN_TOKEN);
    await ops.getByRole("button", { name: "Open the console" }).click();
    const row = ops.locator(`table[data-kind="conversation"] tr[data-id="${conv}"]`);
    await row.waitFor({ timeout: 10000 });
    const before = Number(await row.locator("td.restarts").textContent());
    await row.getByRole("button", { name: "Restart" }).click();
    await until(async () => /^Restarted conversation/.test(await ops.locator("#status").textContent()), 5000, "the console says restarted");
    await until(async () => Number(await row.locator("td.restarts").textContent()) === before + 1, 10000, "the restart count goes up");
    // The chat carries on, both ways.
    await convButton(a, conv).click();
    await convButton(b1, conv).click();
    const after = canary("after-restart");
    await a.getByLabel("Message", { exact: true }).fill(after);
    await a.getByLabel("Message", { exact: true }).press("Enter");
    await msg(b1, after).waitFor({ timeout: 10000 });
    await msg(b2, after).waitFor({ timeout: 10000 });
    const reply = canary("reply");
    await b1.getByLabel("Message", { exact: true }).fill(reply);
    await b1.getByLabel("Message", { exact: true }).press("Enter");
    await msg(a, reply).waitFor({ timeout: 10000 });
    await until(async () => Number(await ops.locator("#m-connections").textContent()) >= 4, 10000, "the console counts the open sockets");
    await until(async () => Number(await ops.locator("#chart").getAttribute("data-points")) >= 3, 10000, "the deletion chart has points");
    await until(async () => Number(await ops.locator("#rates-chart").getAttribute("data-points")) >= 2, 10000, "the rates chart has points");
    check(/^\d+\.\d$/.test(await ops.locator("#m-sent-rate").textContent()), "a message rate");
    await shot(ops, "09-console");
    await shot(a, "10-chat-after-restart");
    console.log("ok - the console restarts a conversation actor and the chat carries on");

    // Presence offline: bob closes both tabs.
    for (const p of [a, b1, b2, c]) {
      secrets.push(await p.evaluate(() => sessionStorage.getItem("ephemera.token")));
    }
    await b1.close();
    await b2.close();
    await until(async () => /^last seen/.test(await a.locator("#chat-presence").textContent()), 10000, "alice sees bob go offline");
    console.log("ok - presence: offline when the last tab closes");

    // Logging out ends the device's token at once.
    const aliceToken = secrets[0];
    await a.getByRole("button", { name: "Log out", exact: true }).click();
    await a.getByRole("button", { name: "Log in", exact: true }).waitFor({ timeout: 5000 });
    check((await a.evaluate(() => sessionStorage.getItem("ephemera.token"))) === null, "the token left the tab");
    const { status } = await fetch(`${BASE}/api/v1/conversations`, { headers: { Authorization: `Bearer ${aliceToken}` } });
    check(status === 401, `the logged-out token is refused (${status})`);
    check((await a.locator("#messages li").count()) === 0 && (await a.locator("#app").isHidden()), "nothing of the chat is left on screen");
    console.log("ok - log out: the token stops working and the page forgets the chat");

    secrets.push(hello, away, brief, toGroup, after, reply);
    check(failures.length === 0, `no page errors: ${failures.join("; ")}`);
  } finally {
    writeFileSync(SECRETS, secrets.filter(Boolean).join("\n") + "\n");
    await browser.close();
  }
  console.log("e2e: all scenarios passed");
}

main().catch((e) => {
  console.error(`not ok - ${e.stack || e}`);
  process.exit(1);
});
