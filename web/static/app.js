// p2pblog web app: live timeline, posting without reload, counter, mention completion.
// Everything here is an enhancement: every page works for reading with JavaScript off.
"use strict";

(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
  const page = document.body.dataset.page;
  const baseTitle = document.title.replace(/^\(\d+\+?\) /, "");

  function fromHTML(html) {
    const t = document.createElement("template");
    t.innerHTML = html.trim();  // server-rendered, escaped by the template engine
    return t.content.firstElementChild;
  }

  async function send(url, fields) {
    const body = new URLSearchParams(fields);
    const response = await fetch(url, {
      method: "POST",
      body,
      headers: { "Accept": "application/json", "X-CSRF-Token": csrf },
      credentials: "same-origin",
    });
    let doc = null;
    try { doc = await response.json(); } catch (e) { doc = { ok: false, error: response.statusText }; }
    if (!response.ok || !doc.ok) throw new Error(doc.error || response.statusText);
    return doc;
  }

  // --- unread mentions in the tab title and the badge ----------------------------------
  function setUnread(n) {
    const badge = document.getElementById("unread");
    const shown = n >= 100 ? "99+" : String(n);
    if (badge) {
      badge.textContent = shown;
      badge.hidden = n === 0;
      badge.setAttribute("aria-label", n + " unread");
    }
    document.title = (n ? "(" + shown + ") " : "") + baseTitle;
  }

  function setDmUnread(n) {
    const badge = document.getElementById("dm-unread");
    if (!badge) return;
    badge.textContent = n >= 100 ? "99+" : String(n);
    badge.hidden = n === 0;
    badge.setAttribute("aria-label", n + " unread messages");
  }

  // --- the sticky header's height, for what sticks below it (the "new posts" button) ----
  const header = document.querySelector("header.top");
  function headerHeight() {
    document.documentElement.style.setProperty("--top-height", header.offsetHeight + "px");
  }
  if (header) {
    headerHeight();
    if (window.ResizeObserver) new ResizeObserver(headerHeight).observe(header);
    else window.addEventListener("resize", headerHeight);
  }

  // --- the timeline ---------------------------------------------------------------------
  const timeline = document.getElementById("timeline");
  const liveTimeline = page === "home" && timeline && timeline.dataset.paged !== "1";
  const newButton = document.getElementById("new-posts");
  const waiting = [];

  function insertPost(html, fresh, replace) {
    const node = fromHTML(html);
    if (!node) return;
    const shown = document.getElementById(node.id);
    if (shown) {
      // The live copy (sent to every open page) may arrive before the answer to our own post,
      // whose copy is the one with this session's controls (Delete).
      if (replace) shown.replaceWith(node);
      return;
    }
    const items = Array.from(timeline.querySelectorAll(":scope > .post"));
    const ts = Number(node.dataset.ts);
    const before = items.find((el) => Number(el.dataset.ts) <= ts);
    if (fresh) node.classList.add("fresh");
    timeline.insertBefore(node, before || null);
    document.getElementById("empty")?.remove();
  }

  function showWaiting() {
    if (!newButton) return;
    newButton.hidden = waiting.length === 0;
    newButton.textContent = waiting.length === 1 ? "1 new post" : waiting.length + " new posts";
  }

  newButton?.addEventListener("click", () => {
    while (waiting.length) insertPost(waiting.shift(), true);
    showWaiting();
    window.scrollTo({ top: 0 });
    timeline.querySelector(".post a")?.focus();
  });

  window.addEventListener("scroll", () => {
    if (window.scrollY < 80 && waiting.length) {
      while (waiting.length) insertPost(waiting.shift(), true);
      showWaiting();
    }
  }, { passive: true });

  function onPost(doc) {
    if (!liveTimeline) return;
    if (window.scrollY > 200) {
      waiting.push(doc.html);
      // A tab left scrolled down for days keeps the newest posts; the button says how many.
      if (waiting.length > 500) waiting.splice(0, waiting.length - 500);
      showWaiting();
    } else {
      insertPost(doc.html, true);
    }
  }

  function onRetract(doc) {
    const el = document.getElementById("p-" + doc.id);
    if (!el) return;
    el.classList.add("deleted");
    const text = el.querySelector(".text");
    if (text) { text.textContent = "(deleted by its author)"; text.classList.add("gone"); }
    el.querySelector(".js-delete")?.remove();
  }

  // --- server-sent events: one stream per browser, shared by its tabs --------------------
  // A browser opens at most six HTTP/1.1 connections to one host, and an event stream holds
  // one for as long as its tab is open: with a stream per tab, the seventh tab of the app
  // would never load.  So the tabs share one stream.  The tab holding the Web Lock
  // "p2pblog-live" keeps it open and relays each event, with its number, to the other tabs
  // over a BroadcastChannel (and replays what a newly opened tab missed since its page was
  // rendered); when that tab closes, the next one takes the lock and reconnects from the
  // last event it saw.  Browsers without these APIs keep a stream per tab.
  const sinceText = timeline?.dataset.live;
  let lastSeen = sinceText ? Number(sinceText) : null;
  const handlers = {
    post: onPost,
    retract: onRetract,
    tracked: (doc) => { if (page === "tracked" && timeline && timeline.dataset.paged !== "1") insertPost(doc.html, true); },
    unread: (doc) => setUnread(doc.unread),
    dms: (doc) => setDmUnread(doc.unread),
    dm_state: (doc) => {
      for (const el of document.querySelectorAll(".dm-state")) {
        if (el.dataset.dm === doc.id) el.textContent = el.closest(".conversations") ? "(" + doc.state + ")" : doc.state;
      }
    },
    more: () => {
      if (liveTimeline && newButton) {
        newButton.hidden = false;
        newButton.textContent = "More new posts: show them";
        newButton.onclick = () => window.location.reload();
      }
    },
    reload: () => { if (liveTimeline && window.scrollY < 80) window.location.reload(); },
  };

  function deliver(name, id, doc) {
    if (name === "reload") { lastSeen = id; handlers.reload?.(doc); return; }  // (numbers restart)
    if (id !== null && lastSeen !== null && id <= lastSeen) return;  // on the page already
    if (id !== null) lastSeen = id;
    handlers[name]?.(doc);
  }

  function openStream(onEvent) {
    const source = new EventSource("/events" + (lastSeen !== null ? "?since=" + lastSeen : ""));
    for (const name of Object.keys(handlers)) {
      source.addEventListener(name, (e) => {
        onEvent(name, e.lastEventId ? Number(e.lastEventId) : null, JSON.parse(e.data));
      });
    }
    source.addEventListener("open", () => { document.body.dataset.live = "open"; });
    source.addEventListener("error", () => {
      // The browser gave up (the node stopped, or restarted and forgot this sign-in): say so
      // and try once a while later; a reload shows the timeline again, or the sign-in page.
      if (source.readyState === EventSource.CLOSED) {
        document.body.dataset.live = "closed";
        setTimeout(() => window.location.reload(), 10000);
      }
    });
  }

  if (window.EventSource) {
    document.body.dataset.live = "connecting";
    if (navigator.locks && window.BroadcastChannel) {
      const channel = new BroadcastChannel("p2pblog-live");
      const relayed = [];
      let leading = false;
      channel.onmessage = (e) => {
        const m = e.data;
        if (!m || typeof m !== "object") return;
        if (m.type === "event" && Object.hasOwn(handlers, m.name) && (m.id === null || typeof m.id === "number")) {
          deliver(m.name, m.id, m.doc);
        }
        else if (m.type === "hello" && leading && typeof m.since === "number") {
          for (const r of relayed) if (r.id !== null && r.id > m.since) channel.postMessage(r);
        }
      };
      navigator.locks.request("p2pblog-live", () => new Promise(() => {  // held until the tab closes
        leading = true;
        openStream((name, id, doc) => {
          const message = { type: "event", name, id, doc };
          relayed.push(message);
          if (relayed.length > 256) relayed.shift();
          channel.postMessage(message);
          deliver(name, id, doc);
        });
      }));
      if (lastSeen !== null) channel.postMessage({ type: "hello", since: lastSeen });
      navigator.locks.query().then((state) => {
        if (!leading && state.held.some((lock) => lock.name === "p2pblog-live")) document.body.dataset.live = "open";
      });
    } else {
      openStream(deliver);
    }
  }

  // --- compose: counter, posting without reload, mention completion ----------------------
  const form = document.getElementById("compose");
  const text = document.getElementById("compose-text");
  const count = document.getElementById("compose-count");
  const error = document.getElementById("compose-error");
  const list = document.getElementById("complete");

  function updateCount() {
    const max = Number(text.dataset.max);
    const left = max - Array.from(text.value).length;  // characters, as the protocol counts them
    count.textContent = left >= 0 ? left + " characters left" : -left + " characters too many";
    count.classList.toggle("over", left < 0);
    form.querySelector('button[type="submit"]').disabled = left < 0;
  }

  if (form && text) {
    text.addEventListener("input", updateCount);
    updateCount();
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      error.hidden = true;
      const fields = new FormData(form);
      const button = form.querySelector('button[type="submit"]');
      button.disabled = true;
      try {
        const doc = await send("/post", fields);
        text.value = "";
        updateCount();
        if (page === "home" && doc.html && timeline) insertPost(doc.html, true, true);
        else if (page === "thread") window.location.reload();
      } catch (err) {
        error.textContent = err.message;
        error.hidden = false;
      } finally {
        button.disabled = false;
        updateCount();
      }
    });
    text.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
    });
  }

  // Mention completion: "@al" offers followed people and petnames whose name starts so.
  let options = [];
  let selected = -1;
  let pending = 0;

  function wordAtCaret() {
    const upto = text.value.slice(0, text.selectionStart);
    const m = /(^|\s)@([\w-]{1,32})$/.exec(upto);
    return m ? { word: m[2], start: upto.length - m[2].length - 1 } : null;
  }

  function closeList() {
    list.hidden = true;
    list.textContent = "";
    options = [];
    selected = -1;
    text.removeAttribute("aria-activedescendant");
  }

  function choose(i) {
    const at = wordAtCaret();
    if (!at || !options[i]) return closeList();
    const insert = options[i].handle + " ";
    const caret = text.selectionStart;
    text.value = text.value.slice(0, at.start) + insert + text.value.slice(caret);
    const pos = at.start + insert.length;
    text.setSelectionRange(pos, pos);
    closeList();
    updateCount();
    text.focus();
  }

  function render() {
    list.textContent = "";
    options.forEach((o, i) => {
      const li = document.createElement("li");
      li.id = "complete-" + i;
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", i === selected ? "true" : "false");
      li.textContent = o.label + " (" + o.fingerprint + ")";
      li.addEventListener("mousedown", (e) => { e.preventDefault(); choose(i); });
      list.appendChild(li);
    });
    list.hidden = options.length === 0;
    if (selected >= 0) text.setAttribute("aria-activedescendant", "complete-" + selected);
  }

  if (text && list) {
    text.setAttribute("role", "combobox");
    text.setAttribute("aria-autocomplete", "list");
    text.setAttribute("aria-controls", "complete");
    text.addEventListener("input", async () => {
      const at = wordAtCaret();
      if (!at) return closeList();
      const mine = ++pending;
      const response = await fetch("/api/complete?q=" + encodeURIComponent(at.word), { credentials: "same-origin" });
      if (mine !== pending || !response.ok) return;
      options = await response.json();
      selected = options.length ? 0 : -1;
      render();
    });
    text.addEventListener("keydown", (e) => {
      if (list.hidden) return;
      if (e.key === "ArrowDown") { selected = (selected + 1) % options.length; render(); e.preventDefault(); }
      else if (e.key === "ArrowUp") { selected = (selected - 1 + options.length) % options.length; render(); e.preventDefault(); }
      else if (e.key === "Enter" || e.key === "Tab") { if (selected >= 0) { choose(selected); e.preventDefault(); } }
      else if (e.key === "Escape") { closeList(); }
    });
    text.addEventListener("blur", () => setTimeout(closeList, 150));
  }

  // --- delete asks first ------------------------------------------------------------------------
  document.addEventListener("submit", (e) => {
    if (e.target.classList?.contains("js-delete") && !window.confirm("Delete this post? Followers will stop showing its text.")) {
      e.preventDefault();
    }
  });

  // --- name claim progress ------------------------------------------------------------------------
  const job = document.getElementById("claim-job");
  if (job && (job.dataset.state === "working" || job.dataset.state === "publishing")) {
    const timer = setInterval(async () => {
      const response = await fetch("/api/claim", { credentials: "same-origin" });
      if (!response.ok) return;
      const doc = await response.json();
      if (!doc) return;
      if (doc.state === "done" || doc.state === "failed") { clearInterval(timer); window.location.reload(); return; }
      const p = job.querySelector("p");
      if (p) {
        p.textContent = doc.state === "working"
          ? "Claim of " + doc.name + " (" + doc.work + " bits): proof of work, " + doc.tries.toLocaleString() +
            " hashes of about " + doc.expected.toLocaleString() + " expected (" + doc.seconds + " s)…"
          : "Claim of " + doc.name + ": storing the claim at the closest nodes…";
      }
      const bar = job.querySelector("progress");
      if (bar) bar.value = Math.min(doc.tries, doc.expected);
    }, 500);
  }

  // --- node page: count replicas now -------------------------------------------------------------
  const countButton = document.getElementById("count-replicas");
  countButton?.addEventListener("click", async () => {
    const status = document.getElementById("replicas-status");
    countButton.disabled = true;
    status.textContent = "searching the DHT for providers…";
    try {
      const response = await fetch("/api/replicas?search=1", { credentials: "same-origin" });
      const doc = await response.json();
      for (const f of doc.feeds) {
        const row = document.querySelector('#replicas tr[data-handle="' + CSS.escape(f.handle) + '"]');
        if (!row) continue;
        row.querySelector(".replicas").textContent = f.replicas;
        row.querySelector(".connected").textContent = f.connected;
        row.querySelector(".providers").textContent = f.providers;
      }
      status.textContent = "updated";
    } catch (err) {
      status.textContent = "failed: " + err.message;
    } finally {
      countButton.disabled = false;
    }
  });

  window.p2pblog = { setUnread };
})();
