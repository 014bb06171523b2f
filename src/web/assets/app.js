// Ephemera web client: the public HTTP API and the socket (PROTOCOL.md),
// nothing else. Server frames are handled by HANDLERS, one function per
// server message of schema/asyncapi.json. No framework: the DOM is
// rebuilt from `state` by small render functions.
//
// Where things live: the login token and the last cursor in
// sessionStorage (one tab, one login, one device, as PROTOCOL 1 has it);
// content only in memory, and only until it burns.

const $ = (id) => document.getElementById(id);
const SEALED_OVERHEAD = 28; // 12-byte nonce + 16-byte tag (PROTOCOL 4)

const state = {
  token: null,
  me: null, // user_id
  myName: null,
  cursor: 0,
  ws: null,
  connected: false,
  syncing: false, // between our `sync` and its `synced`: replayed messages do not count as unread
  retryMs: 500,
  convs: new Map(), // conversation_id -> {id, members, unread, lastSeq}
  msgs: new Map(), // msg_id -> message record
  pending: new Map(), // client_msg_id -> message record awaiting its ack
  open: null, // {conv: id} or {to: user_id} (a 1:1 chat before its first ack)
  names: new Map(), // user_id -> username (or a promise of it)
  presence: new Map(), // user_id -> {status, last_seen}
  typing: new Map(), // conversation_id -> Map(user_id -> expiry ms)
  deliveredSent: new Set(),
  readSent: new Map(), // conversation_id -> seq
  viewing: null, // msg_id of the view-once photo on screen
  following: new Set(), // user_ids this user followed from this tab
};

// ---------------------------------------------------------------- HTTP

class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(`/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 204) return null;
  const json = await r.json().catch(() => null);
  if (!r.ok) {
    const e = json && json.error ? json.error : {};
    if (r.status === 401 && state.token) signOut("Your session ended; log in again.");
    throw new ApiError(r.status, e.code, e.message);
  }
  return json;
}

// The one line of news: refusals and failures (red), or `info` (plain).
function say(text, info = false) {
  $("alert").textContent = text;
  $("alert").classList.toggle("info", info);
}

// --------------------------------------------------------------- crypto

function b64bytes(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

async function aesKey(dataKeyB64, use) {
  const raw = b64bytes(dataKeyB64);
  if (raw.length !== 32) throw new Error("data key is not 32 bytes");
  return crypto.subtle.importKey("raw", raw, { name: "AES-GCM" }, false, [use]);
}

// AES-256-GCM, a 12-byte random nonce before the ciphertext and tag.
async function seal(dataKeyB64, plain) {
  const key = await aesKey(dataKeyB64, "encrypt");
  const nonce = crypto.getRandomValues(new Uint8Array(12));
  const ct = new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv: nonce }, key, plain));
  const out = new Uint8Array(12 + ct.length);
  out.set(nonce, 0);
  out.set(ct, 12);
  return out;
}

async function unseal(dataKeyB64, sealed) {
  const key = await aesKey(dataKeyB64, "decrypt");
  const plain = await crypto.subtle.decrypt(
    { name: "AES-GCM", iv: sealed.subarray(0, 12) },
    key,
    sealed.subarray(12),
  );
  return new Uint8Array(plain);
}

// Encrypts a file in the page and PUTs the ciphertext to the presigned
// URL: the server and the object store only ever see ciphertext.
async function upload(file) {
  const plain = new Uint8Array(await file.arrayBuffer());
  const type = file.type || "image/png";
  const u = await api("POST", "/media/upload-urls", {
    content_type: type,
    bytes: plain.length + SEALED_OVERHEAD,
  });
  const sealed = await seal(u.data_key, plain);
  const r = await fetch(u.put_url, { method: "PUT", body: sealed });
  if (!r.ok) throw new Error(`the upload was refused (${r.status})`);
  return u.media_key;
}

// Downloads and decrypts media into a blob: URL (revoked when it burns).
async function mediaUrl(media) {
  const r = await fetch(media.get_url);
  if (!r.ok) throw new Error(`the photo could not be fetched (${r.status})`);
  const plain = await unseal(media.data_key, new Uint8Array(await r.arrayBuffer()));
  return URL.createObjectURL(new Blob([plain], { type: media.content_type }));
}

// ---------------------------------------------------------------- names

function nameOf(userId) {
  const n = state.names.get(userId);
  if (typeof n === "string") return n;
  if (!n) {
    state.names.set(
      userId,
      api("GET", `/users/${encodeURIComponent(userId)}`)
        .then((u) => {
          state.names.set(userId, u.username);
          renderAll();
        })
        .catch(() => state.names.set(userId, userId.slice(0, 8))),
    );
  }
  return userId.slice(0, 8) + "…";
}

function convTitle(c) {
  const others = c.members.filter((m) => m !== state.me);
  if (c.name) return c.name;
  return others.map(nameOf).join(", ") || "Just me";
}

// ---------------------------------------------------------------- socket

function connect() {
  if (!state.token) return;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  // Browsers cannot set headers on a WebSocket: the token goes in the
  // query, which the server never logs.
  const ws = new WebSocket(`${proto}://${location.host}/api/v1/ws?token=${encodeURIComponent(state.token)}`);
  state.ws = ws;
  setConn("Connecting…");
  ws.onopen = () => {
    state.connected = true;
    state.retryMs = 500;
    setConn("Connected, catching up…");
    state.syncing = true;
    // Resume: everything live after the last cursor this tab saw.
    sendFrame({ type: "sync", after: state.cursor });
  };
  ws.onmessage = (ev) => {
    let f;
    try {
      f = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (typeof f.cursor === "number" && f.cursor > state.cursor && f.type !== "synced") {
      state.cursor = f.cursor;
      sessionStorage.setItem("ephemera.cursor", String(state.cursor));
    }
    const h = HANDLERS[f.type];
    if (h) h(f);
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    state.connected = false;
    state.ws = null;
    if (ev.code === 4401) {
      signOut("Your session ended; log in again.");
      return;
    }
    setConn(`Disconnected; reconnecting in ${Math.round(state.retryMs / 100) / 10} s`);
    setTimeout(connect, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, 5000);
  };
}

function sendFrame(f) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(f));
    return true;
  }
  return false;
}

function setConn(text) {
  $("conn").textContent = text;
  $("conn").dataset.state = state.connected ? "online" : "offline";
}

// ------------------------------------------------------- frame handlers

function conv(id) {
  let c = state.convs.get(id);
  if (!c) {
    c = { id, members: [], unread: 0, lastSeq: 0 };
    state.convs.set(id, c);
    loadConversations();
  }
  return c;
}

function isOpen(convId) {
  return state.open && state.open.conv === convId;
}

function upsertMessage(f) {
  const old = state.msgs.get(f.msg_id);
  if (old && old.burned) return old;
  const m = Object.assign(old || { receipts: {}, reactions: {}, screenshots: [] }, {
    id: f.msg_id,
    conv: f.conversation_id,
    seq: f.seq,
    from: f.from,
    sentAt: f.sent_at,
    expiresAt: f.expires_at,
    policy: f.view_policy,
  });
  if (f.body !== undefined) m.body = f.body;
  if (f.media) m.media = f.media;
  if (f.has_media !== undefined) m.hasMedia = f.has_media;
  state.msgs.set(m.id, m);
  return m;
}

const HANDLERS = {
  ack(f) {
    const m = state.pending.get(f.client_msg_id);
    if (!m) return;
    state.pending.delete(f.client_msg_id);
    Object.assign(m, {
      id: f.msg_id,
      conv: f.conversation_id,
      seq: f.seq,
      sentAt: f.sent_at,
      expiresAt: f.expires_at,
      state: f.state,
    });
    if (!state.msgs.has(m.id)) state.msgs.set(m.id, m);
    const c = conv(f.conversation_id);
    c.lastSeq = Math.max(c.lastSeq, f.seq);
    if (state.open && state.open.to && !state.open.conv) state.open = { conv: f.conversation_id };
    renderAll();
  },
  message(f) {
    const fresh = !state.msgs.has(f.msg_id);
    const m = upsertMessage(f);
    const c = conv(f.conversation_id);
    c.lastSeq = Math.max(c.lastSeq, f.seq);
    if (f.from !== state.me) {
      if (!state.deliveredSent.has(f.msg_id)) {
        state.deliveredSent.add(f.msg_id);
        sendFrame({ type: "delivered", msg_id: f.msg_id });
      }
      if (fresh && !state.syncing && !(isOpen(c.id) && document.visibilityState === "visible")) c.unread += 1;
    } else {
      m.state = m.state || "sent";
    }
    if (m.media && m.policy === "timed") loadTimedMedia(m);
    if (isOpen(c.id)) markRead(c.id);
    renderAll();
  },
  view_result(f) {
    const m = state.msgs.get(f.msg_id);
    if (f.result !== "granted") {
      if (m) m.burned = "viewed";
      say("That view-once photo was already opened.");
      renderAll();
      return;
    }
    if (f.media) {
      mediaUrl(f.media)
        .then((url) => showViewer("View-once photo", url, f.msg_id))
        .catch((e) => say(e.message));
    } else if (f.body !== undefined) {
      showViewer(`View-once message: ${f.body}`, null, f.msg_id);
    }
  },
  burned(f) {
    const m = state.msgs.get(f.msg_id);
    if (m) {
      m.burned = f.reason;
      if (m.url) URL.revokeObjectURL(m.url);
      delete m.url;
      delete m.body;
      delete m.media;
    } else {
      state.msgs.set(f.msg_id, { id: f.msg_id, conv: f.conversation_id, burned: f.reason, receipts: {}, reactions: {}, screenshots: [] });
    }
    renderAll();
  },
  receipt(f) {
    if (f.msg_id) {
      const m = state.msgs.get(f.msg_id);
      if (m && !m.burned) bumpState(m, f.state);
    } else if (f.up_to_seq !== undefined) {
      for (const m of state.msgs.values()) {
        if (m.conv === f.conversation_id && m.from === state.me && m.seq <= f.up_to_seq) bumpState(m, f.state);
      }
    }
    renderAll();
  },
  screenshot(f) {
    const m = state.msgs.get(f.msg_id);
    if (m && !m.screenshots.includes(f.by)) m.screenshots.push(f.by);
    renderAll();
  },
  reaction(f) {
    const m = state.msgs.get(f.msg_id);
    if (!m) return;
    if (f.emoji === null || f.emoji === undefined) delete m.reactions[f.by];
    else m.reactions[f.by] = f.emoji;
    renderAll();
  },
  typing(f) {
    let t = state.typing.get(f.conversation_id);
    if (!t) state.typing.set(f.conversation_id, (t = new Map()));
    if (f.is_typing) t.set(f.user_id, Date.now() + 6000);
    else t.delete(f.user_id);
    renderTyping();
  },
  presence(f) {
    state.presence.set(f.user_id, { status: f.status, lastSeen: f.last_seen });
    renderAll();
  },
  story_posted() {
    loadTray();
  },
  story_gone() {
    loadTray();
    loadMyStories();
  },
  synced(f) {
    state.cursor = Math.max(state.cursor, f.cursor);
    sessionStorage.setItem("ephemera.cursor", String(state.cursor));
    state.syncing = false;
    setConn("Connected");
    // The server's unread counts, now that the replay is in.
    loadConversations(true);
    loadTray();
  },
  pong() {},
  error(f) {
    // A refused send stays on screen, marked as not sent.
    const m = f.ref !== undefined ? state.pending.get(f.ref) : null;
    if (m) m.failed = f.message || f.code;
    say(`The server refused that: ${f.message || f.code}`);
    renderAll();
  },
  call(f) {
    // Calls need WebRTC, which this client does not do yet: decline.
    if (f.action === "offer") {
      sendFrame({ type: "call", call_id: f.call_id, to: f.from, action: "reject" });
      say(`${nameOf(f.from)} called; calls are not supported in the web client yet.`);
    }
  },
};

const ORDER = { sent: 0, delivered: 1, read: 2 };
function bumpState(m, s) {
  if ((ORDER[s] ?? -1) > (ORDER[m.state] ?? -1)) m.state = s;
}

function markRead(convId) {
  if (document.visibilityState !== "visible") return;
  const c = state.convs.get(convId);
  if (!c) return;
  let top = 0;
  for (const m of state.msgs.values()) if (m.conv === convId && m.from !== state.me && m.seq > top) top = m.seq;
  c.unread = 0;
  if (top > (state.readSent.get(convId) || 0)) {
    state.readSent.set(convId, top);
    sendFrame({ type: "read", conversation_id: convId, up_to_seq: top });
  }
}

async function loadTimedMedia(m) {
  if (m.url || m.loading || !m.media) return;
  m.loading = true;
  try {
    const url = await mediaUrl(m.media);
    if (m.burned) URL.revokeObjectURL(url);
    else m.url = url;
  } catch (e) {
    say(e.message);
  }
  m.loading = false;
  renderAll();
}

// ----------------------------------------------------------- HTTP loads

// `authoritative`: take the server's unread counts as they are (after a
// sync, whose replayed messages were not counted here); otherwise keep the
// larger of the server's and ours (a message may arrive during the call).
async function loadConversations(authoritative = false) {
  try {
    const r = await api("GET", "/conversations");
    for (const c of r.conversations) {
      const have = state.convs.get(c.conversation_id);
      const names = JSON.parse(localStorage.getItem("ephemera.groupNames") || "{}");
      state.convs.set(c.conversation_id, {
        id: c.conversation_id,
        members: c.members,
        unread: isOpen(c.conversation_id) ? 0 : authoritative ? c.unread : Math.max(c.unread, have ? have.unread : 0),
        lastSeq: Math.max(c.last_seq, have ? have.lastSeq : 0),
        name: names[c.conversation_id],
      });
    }
    renderAll();
  } catch (e) {
    if (e.status !== 401) say(`Could not load conversations: ${e.message}`);
  }
}

async function loadHistory(convId) {
  try {
    const r = await api("GET", `/conversations/${encodeURIComponent(convId)}/messages?after_seq=0&limit=200`);
    for (const f of r.messages) {
      const m = upsertMessage(f);
      if (m.from === state.me) m.state = m.state || "sent";
      if (m.media && m.policy === "timed") loadTimedMedia(m);
    }
    markRead(convId);
    renderAll();
  } catch (e) {
    say(`Could not load the history: ${e.message}`);
  }
}

// --------------------------------------------------------------- render

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

function left(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function renderConvs() {
  const ul = $("convs");
  ul.replaceChildren();
  const list = [...state.convs.values()].sort((a, b) => b.lastSeq - a.lastSeq || a.id.localeCompare(b.id));
  for (const c of list) {
    const others = c.members.filter((m) => m !== state.me);
    const online = others.some((u) => (state.presence.get(u) || {}).status === "online");
    const badge = c.unread > 0 ? el("span", { class: "badge", "aria-label": `${c.unread} unread` }, String(c.unread)) : null;
    ul.append(
      el(
        "li",
        {},
        el(
          "button",
          {
            type: "button",
            class: isOpen(c.id) ? "conv current" : "conv",
            "aria-current": isOpen(c.id) ? "true" : null,
            dataset: { conversationId: c.id, unread: String(c.unread) },
            onclick: () => openConv(c.id),
          },
          el("span", { class: online ? "dot on" : "dot", "aria-label": online ? "online" : "offline" }),
          el("span", { class: "conv-name" }, convTitle(c)),
          badge,
        ),
      ),
    );
  }
}

function messageItem(m) {
  const mine = m.from === state.me;
  const li = el("li", {
    class: `msg ${mine ? "mine" : "theirs"}`,
    dataset: { msgId: m.id || "", state: m.burned ? "burned" : "live", policy: m.policy || "" },
  });
  li.append(el("span", { class: "from" }, mine ? "You" : nameOf(m.from)));
  if (m.burned) {
    const why = { viewed: "opened once, gone", expired: "expired", unsent: "unsent" }[m.burned] || "gone";
    li.append(el("p", { class: "burned" }, `Burned: ${why}`));
    for (const by of m.screenshots || []) li.append(el("p", { class: "shot", role: "note" }, `${nameOf(by)} took a screenshot`));
    return li;
  }
  if (m.policy === "once") {
    if (mine) li.append(el("p", { class: "once" }, "View-once photo, not opened yet"));
    else
      li.append(
        el("button", { type: "button", class: "open-once", onclick: () => sendFrame({ type: "view", msg_id: m.id }) },
          m.hasMedia === false ? "Open view-once message" : "Open view-once photo"),
      );
  } else if (m.body !== undefined) {
    li.append(el("p", { class: "body" }, m.body));
  } else if (m.url) {
    li.append(el("img", { src: m.url, alt: "Photo", class: "photo" }));
  } else if (m.media) {
    li.append(el("p", { class: "once" }, "Photo loading…"));
  }
  const meta = el("p", { class: "meta" });
  if (m.expiresAt) meta.append(el("time", { class: "countdown", dataset: { expires: String(m.expiresAt) } }, `burns in ${left(m.expiresAt - Date.now())}`));
  if (mine) meta.append(el("span", { class: "receipt", dataset: { receipt: m.failed ? "failed" : m.state || "sending" } }, m.failed ? ` · not sent: ${m.failed}` : ` · ${m.state || "sending"}`));
  const reacts = Object.entries(m.reactions || {});
  if (reacts.length) meta.append(el("span", { class: "reactions" }, " · " + reacts.map(([u, e]) => `${e} ${nameOf(u)}`).join(", ")));
  li.append(meta);
  for (const by of m.screenshots || []) li.append(el("p", { class: "shot", role: "note" }, `${nameOf(by)} took a screenshot`));
  return li;
}

function renderChat() {
  const box = $("chat");
  if (!state.open) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const convId = state.open.conv;
  const c = convId ? state.convs.get(convId) : null;
  box.dataset.conversationId = convId || "";
  const peer = c ? c.members.find((u) => u !== state.me) : state.open.to;
  $("chat-title").textContent = c ? convTitle(c) : nameOf(state.open.to);
  const p = peer && c && c.members.length <= 2 ? state.presence.get(peer) : null;
  $("chat-presence").textContent = p ? (p.status === "online" ? "online" : `last seen ${p.lastSeen ? new Date(p.lastSeen).toLocaleTimeString() : "a while ago"}`) : "";
  $("follow").hidden = !(peer && (!c || c.members.length <= 2));
  $("follow").dataset.userId = peer || "";
  $("follow").textContent = state.following.has(peer) ? "Following" : "Follow";
  const now = Date.now();
  const list = [...state.msgs.values()]
    .filter((m) => m.conv === convId && m.burned !== "expired" && !(m.expiresAt && m.expiresAt <= now))
    .sort((a, b) => (a.seq || 1e15) - (b.seq || 1e15));
  const pend = [...state.pending.values()].filter((m) => (convId ? m.conv === convId : m.to === state.open.to));
  $("messages").replaceChildren(...list.concat(pend).map(messageItem));
  renderTyping();
}

function renderTyping() {
  const id = state.open && state.open.conv;
  const t = id ? state.typing.get(id) : null;
  const now = Date.now();
  const who = t ? [...t].filter(([, exp]) => exp > now).map(([u]) => nameOf(u)) : [];
  $("typing").textContent = who.length ? `${who.join(", ")} ${who.length > 1 ? "are" : "is"} typing…` : "";
}

function renderAll() {
  if (!state.me) return;
  renderConvs();
  renderChat();
}

// A ticker updates countdowns and hides what has expired at its instant,
// whether or not the burned frame has arrived yet.
setInterval(() => {
  const now = Date.now();
  let expired = false;
  for (const t of document.querySelectorAll("time.countdown")) {
    const ms = Number(t.dataset.expires) - now;
    if (ms <= 0) expired = true;
    else t.textContent = `burns in ${left(ms)}`;
  }
  if (expired) renderChat();
  renderTyping();
}, 250);

// -------------------------------------------------------------- actions

function openConv(convId) {
  state.open = { conv: convId };
  const c = state.convs.get(convId);
  if (c) c.unread = 0;
  renderAll();
  loadHistory(convId);
  $("composer-body").focus();
}

function openChatWith(userId) {
  for (const c of state.convs.values()) {
    if (c.members.length === 2 && c.members.includes(userId) && c.members.includes(state.me)) return openConv(c.id);
  }
  state.open = { to: userId };
  renderAll();
}

function newCid() {
  return `web-${Date.now().toString(36)}-${crypto.getRandomValues(new Uint32Array(2)).join("")}`;
}

function sendRecord(fields) {
  const cid = newCid();
  const target = state.open.conv ? { conversation_id: state.open.conv } : { to: state.open.to };
  const frame = Object.assign({ type: "send", client_msg_id: cid }, target, fields);
  const m = {
    id: null, conv: state.open.conv || null, to: state.open.to, from: state.me, seq: null,
    policy: fields.view_policy, body: fields.body, hasMedia: !!fields.media_key,
    receipts: {}, reactions: {}, screenshots: [],
  };
  state.pending.set(cid, m);
  if (!sendFrame(frame)) m.failed = "not connected";
  renderAll();
}

let typingSentAt = 0;
let typingTimer = null;
function noteTyping() {
  if (!state.open || !state.open.conv) return;
  const conversation_id = state.open.conv;
  if (Date.now() - typingSentAt > 3000) {
    typingSentAt = Date.now();
    sendFrame({ type: "typing", conversation_id, is_typing: true });
  }
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => stopTyping(conversation_id), 4000);
}
function stopTyping(conversation_id) {
  if (!typingSentAt) return;
  typingSentAt = 0;
  clearTimeout(typingTimer);
  sendFrame({ type: "typing", conversation_id, is_typing: false });
}

function showViewer(title, url, msgId) {
  $("viewer-title").textContent = title;
  const img = $("viewer-img");
  img.hidden = !url;
  if (url) {
    img.src = url;
    img.alt = title;
  }
  $("viewer-extra").replaceChildren();
  state.viewing = msgId;
  const d = $("viewer");
  d.dataset.msgId = msgId || "";
  if (!d.open) d.showModal();
  $("viewer-close").focus();
}

$("viewer").addEventListener("close", () => {
  const img = $("viewer-img");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.removeAttribute("src");
  state.viewing = null;
});
$("viewer-close").addEventListener("click", () => $("viewer").close());

// Screenshot notices: a page can see the PrintScreen key and nothing else
// (no browser tells a page about OS screenshots). What is on screen: the
// open view-once photo, else the others' messages in the open chat.
document.addEventListener("keyup", (ev) => {
  if (ev.key !== "PrintScreen" || !state.me) return;
  const ids = state.viewing
    ? [state.viewing]
    : [...state.msgs.values()]
        .filter((m) => state.open && m.conv === state.open.conv && m.from !== state.me && !m.burned && m.id)
        .slice(-20)
        .map((m) => m.id);
  for (const msg_id of ids) sendFrame({ type: "screenshot", msg_id });
});

document.addEventListener("visibilitychange", () => {
  if (state.open && state.open.conv) markRead(state.open.conv);
});

// -------------------------------------------------------------- stories

async function loadTray() {
  try {
    const r = await api("GET", "/stories/tray");
    const ul = $("tray");
    ul.replaceChildren();
    if (!r.tray.length) ul.append(el("li", { class: "empty" }, "No stories from people you follow."));
    for (const t of r.tray) {
      state.names.set(t.user_id, t.username);
      ul.append(
        el("li", {},
          el("button", {
            type: "button",
            class: t.has_unviewed ? "ring unviewed" : "ring viewed",
            dataset: { userId: t.user_id, unviewed: String(t.has_unviewed) },
            "aria-label": `${t.username}: ${t.story_count} ${t.story_count === 1 ? "story" : "stories"}${t.has_unviewed ? ", new" : ""}`,
            onclick: () => viewStories(t.user_id),
          }, el("span", { class: "avatar", "aria-hidden": "true" }, t.username.slice(0, 1).toUpperCase()), el("span", {}, t.username)),
        ),
      );
    }
  } catch (e) {
    if (e.status !== 401) say(`Could not load stories: ${e.message}`);
  }
}

async function viewStories(userId) {
  try {
    const r = await api("GET", `/users/${encodeURIComponent(userId)}/stories`);
    const next = r.stories.find((s) => !s.viewed) || r.stories[0];
    if (!next) return say("Those stories have ended.");
    const s = await api("GET", `/stories/${encodeURIComponent(next.story_id)}`);
    const url = await mediaUrl(s.media);
    showViewer(`Story by ${nameOf(s.author)}${s.caption ? `: ${s.caption}` : ""}`, url, null);
    $("viewer").dataset.storyId = s.story_id;
    loadTray();
  } catch (e) {
    say(`Could not open the story: ${e.message}`);
  }
}

async function loadMyStories() {
  if (!state.me) return;
  try {
    const r = await api("GET", `/users/${encodeURIComponent(state.me)}/stories`);
    const ul = $("my-stories");
    ul.replaceChildren();
    if (!r.stories.length) ul.append(el("li", {}, "You have no live stories."));
    for (const s of r.stories) {
      const viewers = el("ul", { class: "viewers", dataset: { storyId: s.story_id } });
      ul.append(
        el("li", { dataset: { storyId: s.story_id } },
          el("span", {}, `Posted ${new Date(s.posted_at).toLocaleTimeString()}, `),
          el("time", { class: "countdown", dataset: { expires: String(s.expires_at) } }, `burns in ${left(s.expires_at - Date.now())}`),
          " ",
          el("button", { type: "button", class: "show-viewers", onclick: () => loadViewers(s.story_id, viewers) }, "Viewers"),
          viewers,
        ),
      );
    }
  } catch (e) {
    say(`Could not load your stories: ${e.message}`);
  }
}

async function loadViewers(storyId, ul) {
  try {
    const r = await api("GET", `/stories/${encodeURIComponent(storyId)}/viewers`);
    ul.replaceChildren(el("li", { class: "count" }, `${r.view_count} ${r.view_count === 1 ? "view" : "views"}`));
    for (const v of r.viewers) ul.append(el("li", { class: "viewer", dataset: { userId: v.user_id } }, `${nameOf(v.user_id)} at ${new Date(v.viewed_at).toLocaleTimeString()}`));
  } catch (e) {
    say(`Could not load the viewers: ${e.message}`);
  }
}

// ----------------------------------------------------------------- auth

async function signIn(username, password, register) {
  say("");
  try {
    if (register) await api("POST", "/accounts", { username, password });
    const s = await api("POST", "/sessions", { username, password, device_name: "web" });
    sessionStorage.setItem("ephemera.token", s.token);
    sessionStorage.setItem("ephemera.user", s.user_id);
    sessionStorage.setItem("ephemera.name", username);
    start(s.token, s.user_id, username);
  } catch (e) {
    const why = { 401: "Wrong username or password.", 409: "That username is taken.", 422: "Usernames are 3 to 32 of a-z, 0-9 and _; passwords 8 to 128 characters.", 429: "Too many tries; wait a little." }[e.status];
    say(why || `Could not sign in: ${e.message}`);
  }
}

function start(token, userId, name) {
  Object.assign(state, { token, me: userId, myName: name });
  state.cursor = Number(sessionStorage.getItem("ephemera.cursor") || 0);
  state.names.set(userId, name);
  $("auth").hidden = true;
  $("app").hidden = false;
  $("me").hidden = false;
  $("my-name").textContent = name;
  $("my-id").textContent = userId;
  document.title = `Ephemera: ${name}`;
  connect();
  loadConversations();
  loadTray();
  loadMyStories();
}

function signOut(why, info = false) {
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close(1000);
  sessionStorage.clear();
  for (const m of state.msgs.values()) if (m.url) URL.revokeObjectURL(m.url);
  Object.assign(state, { token: null, me: null, cursor: 0, open: null, connected: false });
  for (const k of ["convs", "msgs", "pending", "presence", "typing", "readSent", "following"]) state[k].clear();
  state.deliveredSent.clear();
  // Nothing of the session stays in the page, hidden or not.
  for (const id of ["messages", "convs", "tray", "my-stories", "typing", "chat-title", "my-name", "my-id"]) $(id).replaceChildren();
  if ($("viewer").open) $("viewer").close();
  $("chat").hidden = true;
  $("app").hidden = true;
  $("me").hidden = true;
  $("auth").hidden = false;
  setConn("Not connected");
  if (why) say(why, info);
}

// ------------------------------------------------------------- wiring

$("auth-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  signIn($("username").value.trim(), $("password").value, false);
});
$("register").addEventListener("click", () => {
  if (!$("auth-form").reportValidity()) return;
  signIn($("username").value.trim(), $("password").value, true);
});
$("logout").addEventListener("click", async () => {
  try {
    await api("DELETE", "/sessions/current");
  } catch {
    // Signed out locally either way.
  }
  signOut("Logged out.", true);
});

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const body = $("composer-body").value;
  if (!body.trim() || !state.open) return;
  sendRecord({ body, view_policy: "timed", ttl_seconds: Number($("lifetime").value) });
  $("composer-body").value = "";
  if (state.open.conv) stopTyping(state.open.conv);
});
$("composer-body").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});
$("composer-body").addEventListener("input", noteTyping);

$("send-photo").addEventListener("click", async () => {
  const file = $("photo-file").files[0];
  if (!file || !state.open) return say("Choose a photo first.");
  $("send-photo").disabled = true;
  try {
    const media_key = await upload(file);
    sendRecord({ media_key, view_policy: "once", ttl_seconds: Number($("lifetime").value) });
    $("photo-file").value = "";
  } catch (e) {
    say(`Could not send the photo: ${e.message}`);
  }
  $("send-photo").disabled = false;
});

$("new-chat").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const id = $("new-chat-user").value.trim();
  if (id === state.me) return say("That is your own id.");
  openChatWith(id);
  $("new-chat-user").value = "";
});

$("new-group").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const members = $("group-members").value.split(",").map((s) => s.trim()).filter(Boolean);
  const name = $("group-name").value.trim();
  try {
    const r = await api("POST", "/conversations", name ? { members, name } : { members });
    if (name) {
      const names = JSON.parse(localStorage.getItem("ephemera.groupNames") || "{}");
      names[r.conversation_id] = name;
      localStorage.setItem("ephemera.groupNames", JSON.stringify(names));
    }
    $("group-members").value = "";
    $("group-name").value = "";
    await loadConversations();
    openConv(r.conversation_id);
  } catch (e) {
    say(`Could not create the group: ${e.message}`);
  }
});

$("follow").addEventListener("click", async () => {
  const id = $("follow").dataset.userId;
  try {
    await api("PUT", `/following/${encodeURIComponent(id)}`);
    state.following.add(id);
    $("follow").textContent = "Following";
    loadTray();
  } catch (e) {
    say(`Could not follow: ${e.message}`);
  }
});

$("story-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("story-file").files[0];
  if (!file) return;
  try {
    const media_key = await upload(file);
    await api("POST", "/stories", { media_key, audience: "everyone" });
    $("story-file").value = "";
    say("Story posted.", true);
    $("my-stories-box").open = true;
    loadMyStories();
  } catch (e) {
    say(`Could not post the story: ${e.message}`);
  }
});
$("my-stories-box").addEventListener("toggle", () => {
  if ($("my-stories-box").open) loadMyStories();
});

// Keep-alive under the server's heartbeat timeout.
setInterval(() => sendFrame({ type: "ping" }), 15000);

// A test hook: drop the socket as a network outage would and stay away
// `holdMs`, to show the resume with `sync` (what arrives meanwhile is lost
// to this socket: a closing socket delivers nothing).
window.ephemera = {
  dropSocket(holdMs = 500) {
    if (!state.ws) return;
    state.retryMs = holdMs;
    state.ws.close(4000, "dropped");
  },
  get cursor() {
    return state.cursor;
  },
  handledFrames: Object.keys(HANDLERS),
};

const saved = sessionStorage.getItem("ephemera.token");
if (saved) start(saved, sessionStorage.getItem("ephemera.user"), sessionStorage.getItem("ephemera.name"));
