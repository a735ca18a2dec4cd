/* foveal review dashboard: keyboard shortcuts, the live feed (server-sent events), review actions
   (JSON POSTs with the CSRF token and a client-generated idempotency key), box drawing and the
   evidence lightbox. Plain JavaScript, no libraries, nothing fetched from elsewhere. */
(function () {
  "use strict";
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const csrf = () => $('meta[name="csrf-token"]').content;

  function uuid4() {  // crypto.randomUUID needs a secure context; plant LANs are often plain http
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  let toastTimer = null;
  function toast(text, isError) {
    const el = $("#toast");
    el.textContent = text;
    el.className = "toast show" + (isError ? " err" : "");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.className = "toast"; }, isError ? 4000 : 1600);
  }

  function typing(event) {
    const t = event.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }

  function overlays() {
    const help = $("#help");
    document.addEventListener("click", (e) => {
      if (e.target.closest("[data-help]")) help.hidden = false;
      else if (e.target === help) help.hidden = true;
    });
    return {
      key(e) {
        if (e.key === "?" && !typing(e)) { help.hidden = !help.hidden; return true; }
        if (e.key === "Escape" && !help.hidden) { help.hidden = true; return true; }
        return false;
      },
    };
  }

  function esc(text) {
    const d = document.createElement("div");
    d.textContent = String(text);
    return d.innerHTML;
  }

  /* -- queue ---------------------------------------------------------------------------- */
  function queuePage() {
    const common = overlays();
    const rows = $$("#queue tbody tr[data-href]");
    let at = -1;
    function select(k) {
      if (!rows.length) return;
      at = Math.max(0, Math.min(rows.length - 1, k));
      rows.forEach((r, i) => r.classList.toggle("sel", i === at));
      rows[at].scrollIntoView({ block: "nearest" });
    }
    rows.forEach((r, i) => r.addEventListener("click", (e) => {
      if (e.target.tagName !== "A") { select(i); location.href = r.dataset.href; }
    }));
    if (rows.length) select(0);
    document.addEventListener("keydown", (e) => {
      if (common.key(e) || typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      const page = { n: "#next-page", p: "#prev-page" }[e.key];
      if (e.key === "j" || e.key === "ArrowDown") { select(at + 1); e.preventDefault(); }
      else if (e.key === "k" || e.key === "ArrowUp") { select(at - 1); e.preventDefault(); }
      else if ((e.key === "Enter" || e.key === "o") && at >= 0) location.href = rows[at].dataset.href;
      else if (page && $(page)) location.href = $(page).href;
      else if (e.key === "/") { e.preventDefault(); $("#filters select").focus(); }
    });
    liveFeed();
  }

  function liveFeed() {
    const list = $("#live-feed"), count = $("#live-count"), dot = $("#live-dot");
    if (!list || !window.EventSource) return;
    let seen = 0;
    const source = new EventSource("/live");
    source.onopen = () => { dot.className = "live-dot on"; };
    source.onerror = () => { dot.className = "live-dot off"; };  // EventSource reconnects with Last-Event-ID
    source.addEventListener("inspection", (event) => {
      const item = JSON.parse(event.data);
      const li = document.createElement("li");
      li.className = "fresh";
      li.dataset.id = item.id;
      const kind = item.defect_type && item.defect_type !== "none" ? " " + esc(item.defect_type) : "";
      li.innerHTML = `<span class="badge ${esc(item.verdict)}">${esc(item.verdict)}</span>` +
        `<a href="/inspections/${item.id}">#${item.id}${kind} · ${(item.confidence * 100).toFixed(0)} %</a>` +
        `<small>${esc(item.line)} · ${esc(item.station)} · ${esc(item.product)} · ${new Date(item.created_at).toLocaleTimeString()}</small>`;
      list.prepend(li);
      while (list.children.length > 50) list.lastChild.remove();
      count.textContent = String(++seen);
    });
  }

  /* -- inspection ----------------------------------------------------------------------- */
  function inspectionPage() {
    const common = overlays();
    const root = $("#inspection");
    const id = root.dataset.id, query = root.dataset.query;
    const qs = query ? "?" + query : "";
    let nextId = root.dataset.next, mode = null, busy = false, pending = null;
    const panes = { relabel: $("#types"), box: $("#boxhelp"), comment: $("#comment") };
    const lightbox = $("#lightbox");

    function setMode(m) {
      mode = m;
      Object.entries(panes).forEach(([k, el]) => { el.hidden = k !== m; });
      $("#frame").classList.toggle("drawing", m === "box");
      if (m === "comment") $("#note").focus();
      if (m === "box") startBox();
      else $("#draft").hidden = true;
    }

    function go(target) { if (target) location.href = `/inspections/${target}${qs}`; }

    // Reviews are sent one at a time, in the order they were asked for: a comment typed while the
    // relabel before it is still in flight waits for it instead of being dropped. A second press of
    // the action in flight is the same review (the same request id), not a new one.
    let inflight = Promise.resolve();
    function submit(action, extra) {
      if (busy && pending && pending.action === action) return inflight;
      inflight = inflight.then(() => send(action, extra));
      return inflight;
    }

    async function send(action, extra) {
      busy = true;
      const opened = mode;  // the pane this review came from; one opened meanwhile stays open
      pending = pending && pending.action === action ? pending : { action, request_id: uuid4() };
      const body = Object.assign({ action, request_id: pending.request_id }, extra || {});
      $$("#actions button").forEach((b) => b.classList.add("busy"));
      try {
        const response = await fetch(`/api/inspections/${id}/reviews${qs}`, {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf(), Accept: "application/json" },
          body: JSON.stringify(body),
        });
        const data = await response.json().catch(() => ({}));
        if (!response.ok) { pending = null; toast(data.error || `refused (${response.status})`, true); return; }
        pending = null;
        addHistory(data, extra);
        if (mode === opened) setMode(null);
        const label = data.verdict === "defect" ? `defect · ${data.defect_type}` : (data.verdict || "");
        toast(`${action}${label ? ": " + label : ""} saved`);
        root.dataset.reviewed = data.review_id;
        if (action !== "comment") {
          nextId = data.next || nextId;
          // move on unless the reviewer has started something else here (a comment, a box)
          if (nextId) setTimeout(() => { if (mode === null) go(nextId); }, 450);
        }
      } catch (err) {
        toast("network error: press again to retry (it will not be saved twice)", true);  // same key on retry
      } finally {
        busy = false;
        $$("#actions button").forEach((b) => b.classList.remove("busy"));
      }
    }

    function addHistory(data, extra) {
      const empty = $("#no-history");
      if (empty) empty.remove();
      const li = document.createElement("li");
      const label = data.verdict === "defect" ? `defect: ${esc(data.defect_type)}` : esc(data.verdict || "");
      li.innerHTML = `<span class="review ${esc(data.action)}">${esc(data.action)}</span> ${label} ` +
        `<small class="muted">${esc(data.reviewer)} · just now</small>` +
        (extra && extra.note ? `<blockquote>${esc(extra.note)}</blockquote>` : "");
      $("#history").prepend(li);
    }

    /* box drawing: drag to draw, arrows move, shift+arrows resize, Enter saves */
    const frame = $("#frame"), draft = $("#draft");
    let box = null, drag = null;
    function show() {
      if (!box) { draft.hidden = true; return; }
      const [x1, y1, x2, y2] = box;
      Object.assign(draft.style, { left: `${x1 * 100}%`, top: `${y1 * 100}%`, width: `${(x2 - x1) * 100}%`, height: `${(y2 - y1) * 100}%` });
      draft.hidden = false;
    }
    function startBox() {
      const current = root.dataset.box ? root.dataset.box.split(",").map(Number) : null;
      box = current && current.length === 4 ? current : [0.4, 0.4, 0.6, 0.6];
      show();
    }
    function point(e) {
      const r = frame.getBoundingClientRect();
      return [Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)), Math.min(1, Math.max(0, (e.clientY - r.top) / r.height))];
    }
    frame.addEventListener("mousedown", (e) => {
      if (mode !== "box") return;
      e.preventDefault();
      drag = point(e);
    });
    window.addEventListener("mousemove", (e) => {
      if (!drag) return;
      const [x, y] = point(e);
      box = [Math.min(drag[0], x), Math.min(drag[1], y), Math.max(drag[0], x), Math.max(drag[1], y)];
      show();
    });
    window.addEventListener("mouseup", () => { drag = null; });
    function nudge(dx, dy, resize) {
      const s = 0.01;
      let [x1, y1, x2, y2] = box;
      if (resize) { x2 += dx * s; y2 += dy * s; } else { x1 += dx * s; x2 += dx * s; y1 += dy * s; y2 += dy * s; }
      if (x1 < 0 || y1 < 0 || x2 > 1 || y2 > 1 || x2 - x1 < 0.005 || y2 - y1 < 0.005) return;
      box = [x1, y1, x2, y2];
      show();
    }
    function saveBox() {
      if (!box || box[2] - box[0] < 0.002 || box[3] - box[1] < 0.002) { toast("draw a box first", true); return; }
      const type = root.dataset.type && root.dataset.type !== "none" ? root.dataset.type : null;
      if (!type) { toast("this is labelled ok: relabel it with a defect type first (t)", true); return; }
      submit("box", { box: box.map((v) => Math.round(v * 1e5) / 1e5), defect_type: type });
    }

    function relabel(kind) { root.dataset.type = kind; submit("relabel", { defect_type: kind }); }

    $$("#actions [data-action]").forEach((b) => b.addEventListener("click", () => act(b.dataset.action)));
    $$("#types [data-type]").forEach((b) => b.addEventListener("click", () => relabel(b.dataset.type)));
    function act(action) {
      if (action === "confirm" || action === "reject") submit(action);
      else setMode(mode === action ? null : action);
    }

    document.addEventListener("click", (e) => {
      const img = e.target.closest("[data-enlarge]");
      if (img) { $("img", lightbox).src = img.src; lightbox.hidden = false; }
      else if (e.target.closest("#lightbox")) lightbox.hidden = true;
    });

    document.addEventListener("keydown", (e) => {
      if (mode === "comment" && typing(e)) {
        if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit("comment", { note: $("#note").value }); }
        else if (e.key === "Escape") setMode(null);
        return;
      }
      if (common.key(e) || typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      if (e.key === "Escape") { if (!lightbox.hidden) lightbox.hidden = true; else setMode(null); return; }
      if (mode === "relabel" && /^[1-9]$/.test(e.key)) {
        const choice = $$("#types [data-type]")[Number(e.key) - 1];
        if (choice) relabel(choice.dataset.type);
        return;
      }
      if (mode === "box") {
        const arrows = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[e.key];
        if (arrows) { e.preventDefault(); nudge(arrows[0], arrows[1], e.shiftKey); return; }
        if (e.key === "Enter") { e.preventDefault(); saveBox(); return; }
      }
      const keys = {
        c: () => act("confirm"), x: () => act("reject"), t: () => act("relabel"), b: () => act("box"),
        m: () => { act("comment"); e.preventDefault(); },
        j: () => go(nextId), ArrowRight: () => go(nextId), k: () => go(root.dataset.prev), ArrowLeft: () => go(root.dataset.prev),
        u: () => { location.href = "/" + qs; },
        e: () => { const first = $(".crops img, .strip img"); if (first) first.click(); },
      };
      if (keys[e.key]) keys[e.key]();
    });
  }

  window.foveal = { queuePage, inspectionPage, toast };
  document.addEventListener("DOMContentLoaded", () => {
    if (!$("#live-feed") && !$("#inspection")) {
      const common = overlays();
      document.addEventListener("keydown", (e) => common.key(e));
    }
  });
})();
