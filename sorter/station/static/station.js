// sorter station: small hand-written script, no framework.
// Review page: one key per verdict, the next item prefetched and shown at once.
// Status page: polls /status.json and updates the counters.
"use strict";
(function () {
  const body = document.body;
  const csrf = body.dataset.csrf || "";
  const page = body.dataset.page;

  function flash(text, bad) {
    const el = document.getElementById("flash");
    if (!el) return;
    el.textContent = text;
    el.className = "flash shown" + (bad ? " bad" : "");
  }

  // ------------------------------------------------------------------ review
  function setupReview() {
    const current = document.getElementById("current");
    const holder = document.getElementById("prefetch");
    const order = current.dataset.order || "newest";
    let prefetched = null;      // HTML of the next item, or "" when none
    let prefetching = null;     // the pending fetch
    let inFlight = new Set();   // item ids whose verdict is being sent

    function item() { return current.querySelector("article.item"); }

    function prefetch() {
      const it = item();
      const params = new URLSearchParams({ order: order });
      if (it) {
        params.set("cursor", it.dataset.cursor);
        params.set("exclude", [it.dataset.itemId, ...inFlight].slice(0, 10).join(","));
      }
      prefetched = null;
      const p = fetch("/review/next?" + params.toString(), { credentials: "same-origin" })
        .then(r => (r.status === 204 ? "" : r.ok ? r.text() : Promise.reject(new Error("HTTP " + r.status))))
        .then(html => {
          if (p !== prefetching) return;
          prefetched = html;
          holder.innerHTML = html;   // hidden: its images load into the cache now
          holder.querySelectorAll("img").forEach(img => { const i = new Image(); i.src = img.src; });
        })
        .catch(() => { if (p === prefetching) prefetched = null; });
      prefetching = p;
      return p;
    }

    function show(html) {
      current.innerHTML = html || '<p class="empty">Nothing waits for a verdict.</p>';
      holder.innerHTML = "";
      const note = current.querySelector("input[name=note]");
      if (note) note.value = "";
      // when the next item is on screen with its images decoded (the browser test measures this)
      body.dataset.shownAt = String(performance.now());
      const imgs = Array.from(current.querySelectorAll("img"));
      Promise.all(imgs.map(i => i.decode().catch(() => null)))
        .then(() => { body.dataset.readyAt = String(performance.now()); });
      if (html) prefetch(); else setTimeout(waitForItems, 3000);
    }

    function waitForItems() {
      if (item()) return;
      prefetch().then(() => { if (!item() && prefetched) show(prefetched); else if (!item()) setTimeout(waitForItems, 3000); });
    }

    function send(label) {
      const it = item();
      if (!it) return;
      const form = it.querySelector("form.verdict");
      const data = new FormData(form);
      data.set("label", label);
      data.set("csrf", csrf);
      const id = it.dataset.itemId;
      inFlight.add(id);
      body.dataset.verdictAt = String(performance.now());
      const post = fetch("/review/verdict", {
        method: "POST", body: data, credentials: "same-origin",
        headers: { "Accept": "application/json", "X-CSRF-Token": csrf },
      }).then(r => r.json().catch(() => ({ ok: false, error: "HTTP " + r.status })))
        .then(res => {
          inFlight.delete(id);
          if (!res.ok) { flash("Verdict for " + id + " NOT recorded: " + res.error, true); return; }
          flash(id + ": " + label + (res.corrects ? " (correction)" : "") + (data.get("damaged") === "yes" ? ", damaged" : ""));
          const oc = document.getElementById("open-count");
          if (oc) oc.textContent = res.open;
          const recent = document.getElementById("recent");
          if (recent) {
            const tr = document.createElement("tr");
            for (const t of [id, label + (data.get("damaged") === "yes" ? " (damaged)" : ""), "you", "just now", res.corrects ? "correction" : ""]) {
              const td = document.createElement("td"); td.textContent = t; tr.appendChild(td);
            }
            recent.prepend(tr);
          }
          body.dataset.lastVerdict = id;
        })
        .catch(err => { inFlight.delete(id); flash("Verdict for " + id + " NOT recorded: " + err, true); });
      // the next item is shown now, not after the round trip
      if (prefetched !== null) show(prefetched);
      else if (prefetching) prefetching.then(() => show(prefetched));
      return post;
    }

    document.addEventListener("keydown", ev => {
      if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
      const t = ev.target;
      if (t && t.name === "note") {
        if (ev.key === "Enter" || ev.key === "Escape") { ev.preventDefault(); t.blur(); }
        return;   // typing a note
      }
      const k = ev.key.toLowerCase();
      const labels = { l: "lead_acid", i: "li_ion", o: "other", "1": "lead_acid", "2": "li_ion", "3": "other" };
      if (labels[k]) { ev.preventDefault(); send(labels[k]); }
      else if (k === "d") {
        const it = item(); if (!it) return;
        ev.preventDefault();
        const yes = it.querySelector("input[name=damaged][value=yes]");
        const no = it.querySelector("input[name=damaged][value=no]");
        (yes.checked ? no : yes).checked = true;
      } else if (k === "n") {
        const it = item(); if (!it) return;
        ev.preventDefault(); it.querySelector("input[name=note]").focus();
      } else if (k === "u" && body.dataset.lastVerdict) {
        window.location = "/review/item/" + encodeURIComponent(body.dataset.lastVerdict);
      }
    });
    // taps and clicks: the same path as the keys
    current.addEventListener("submit", ev => {
      ev.preventDefault();
      const label = ev.submitter && ev.submitter.value;
      if (label) send(label);
    });
    if (item()) prefetch(); else setTimeout(waitForItems, 3000);
  }

  // ------------------------------------------------------------------ status
  function setupStatus() {
    const root = document.getElementById("status");
    const every = parseInt(root.dataset.refreshMs || "2000", 10);
    function get(obj, path) { return path.split(".").reduce((o, k) => (o == null ? o : o[k]), obj); }
    function fmt(v) { return v == null ? "–" : (typeof v === "number" && !Number.isInteger(v)) ? v.toFixed(1) : String(v); }
    function rows(tbody, obj) {
      tbody.textContent = "";
      Object.keys(obj).sort().forEach(k => {
        const tr = document.createElement("tr"), th = document.createElement("th"), td = document.createElement("td");
        th.textContent = k; td.textContent = obj[k]; tr.append(th, td); tbody.appendChild(tr);
      });
    }
    function tick() {
      fetch("/status.json", { credentials: "same-origin" }).then(r => r.ok ? r.json() : Promise.reject(r.status))
        .then(s => {
          root.querySelectorAll("[data-k]").forEach(el => {
            const k = el.dataset.k;
            el.textContent = k === "at_text" ? new Date(s.at * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : fmt(get(s, k));
          });
          const ul = document.getElementById("alarms");
          ul.textContent = "";
          (s.alarms.length ? s.alarms : ["none"]).forEach(a => {
            const li = document.createElement("li"); li.textContent = a; if (!s.alarms.length) li.className = "ok"; ul.appendChild(li);
          });
          const sensors = Object.keys(s.sensors).sort().map(k => k + " " + s.sensors[k]).join(", ");
          document.getElementById("sensors").textContent = sensors || "unknown (metrics off)";
          document.getElementById("chart").innerHTML = s.chart;   // built by the server from numbers only
          rows(document.getElementById("lanes"), s.lanes_hour);
          rows(document.getElementById("deliveries"), s.deliveries_hour);
        })
        .catch(() => {})
        .finally(() => setTimeout(tick, every));
    }
    setTimeout(tick, every);
  }

  if (page === "review") setupReview();
  if (page === "status") setupStatus();
})();
