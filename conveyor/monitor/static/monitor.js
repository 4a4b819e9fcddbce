/* The monitor's pages: fetch the JSON API, render with DOM calls, refresh every 1.5 s.
   Text is always set with textContent, so nothing from a task can inject markup. */
(function () {
  "use strict";
  var body = document.body;
  var PAGE = body.dataset.page, ROLE = body.dataset.role;
  var REFRESH = Number(body.dataset.refresh) || 1500;
  var COLORS = { SUCCESS: "#16a34a", FAILURE: "#dc2626", RETRY: "#d97706", REVOKED: "#64748b", DEAD: "#7c3aed" };
  var LABELS = { SUCCESS: "succeeded", FAILURE: "failed", RETRY: "retried", REVOKED: "revoked", DEAD: "dead-lettered" };
  var OUTCOMES = ["SUCCESS", "FAILURE", "RETRY", "REVOKED", "DEAD"];
  if (ROLE !== "admin") body.classList.add("readonly");

  // -- helpers -----------------------------------------------------------------
  function h(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v == null) return;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else if (k.slice(0, 2) === "on") node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    });
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child == null) continue;
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function $(id) { return document.getElementById(id); }
  function fill(tbody, rows, emptyText, span) {
    tbody.textContent = "";
    if (!rows.length) {
      tbody.appendChild(h("tr", { class: "empty" }, h("td", { colspan: span || 20, text: emptyText || "nothing yet" })));
      return;
    }
    rows.forEach(function (r) { tbody.appendChild(r); });
  }
  function td(content, cls) {
    var cell = h("td", { class: cls });
    if (content != null && typeof content === "object") cell.appendChild(content);
    else cell.textContent = content == null ? "–" : String(content);
    return cell;
  }
  function num(v) { return v == null ? "–" : Number(v).toLocaleString(); }
  function pct(v) { return v == null ? "–" : (v * 100).toFixed(1) + " %"; }
  function secs(v) {
    if (v == null) return "–";
    if (v < 1) return (v * 1000).toFixed(v < 0.01 ? 1 : 0) + " ms";
    if (v < 120) return v.toFixed(2) + " s";
    if (v < 7200) return (v / 60).toFixed(1) + " min";
    return (v / 3600).toFixed(1) + " h";
  }
  function when(t) {
    if (!t) return "–";
    var d = new Date(t * 1000);
    return d.toLocaleDateString() + " " + d.toLocaleTimeString();
  }
  // Beat's times are shown in the project's zone (the `timezone` setting), the
  // zone the schedules page names, not in whatever zone the browser is in.
  function whenIn(t, zone) {
    if (!t) return "–";
    try {
      return new Intl.DateTimeFormat(undefined, { timeZone: zone, year: "numeric", month: "2-digit",
        day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" }).format(new Date(t * 1000));
    } catch (err) { return when(t) + " (browser zone)"; }
  }
  function ago(s) {
    if (s == null) return "–";
    if (s < 60) return s.toFixed(1) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    return (s / 3600).toFixed(1) + " h ago";
  }
  function mem(kib) { return kib == null ? "–" : (kib / 1024).toFixed(1) + " MiB"; }
  function badge(state) { return h("span", { class: "badge s-" + String(state || "").toLowerCase(), text: state || "?" }); }
  function taskLink(id) { return h("a", { href: "/tasks/" + encodeURIComponent(id), class: "tid", text: id }); }
  function pretty(v) { return v === undefined ? "–" : JSON.stringify(v, null, 2); }
  function bar(percent) {
    var inner = h("span");
    inner.style.width = Math.max(0, Math.min(100, percent)).toFixed(1) + "%";
    return h("div", { class: "bar", role: "progressbar", "aria-valuenow": percent.toFixed(0),
                      "aria-valuemin": "0", "aria-valuemax": "100" }, inner,
             h("b", { text: percent.toFixed(0) + " %" }));
  }

  function api(path) {
    return fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (doc) {
          if (!r.ok) { var e = new Error(doc.error || r.statusText); e.status = r.status; throw e; }
          return doc;
        });
      });
  }
  function post(path, payload) {
    return fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Conveyor-Action": "1", Accept: "application/json" },
      body: JSON.stringify(payload || {})
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (doc) {
        if (!r.ok) throw new Error(doc.error || r.statusText);
        return doc;
      });
    });
  }
  var toastTimer;
  function toast(message, bad, link) {
    var box = $("toast");
    box.textContent = message;
    if (link) { box.appendChild(document.createTextNode(" ")); box.appendChild(taskLink(link)); }
    box.className = "toast show" + (bad ? " bad" : "");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { box.className = "toast"; }, 6000);
  }

  /* Run render() now and every REFRESH ms while the tab is visible. */
  function live(render) {
    var busy = false;
    function tick() {
      if (busy || document.hidden) return;
      busy = true;
      Promise.resolve().then(render).then(function () {
        $("live").className = "live";
        $("live").textContent = "live";
      }, function (err) {
        $("live").className = "live down";
        $("live").textContent = err && err.message ? "error: " + err.message : "offline";
      }).then(function () { busy = false; });
    }
    tick();
    setInterval(tick, REFRESH);
    return tick;
  }

  var windowChoice = "1h";
  function windowButtons(onChange) {
    document.querySelectorAll("[data-window]").forEach(function (b) {
      b.addEventListener("click", function () {
        windowChoice = b.dataset.window;
        document.querySelectorAll("[data-window]").forEach(function (o) { o.classList.toggle("on", o === b); });
        onChange();
      });
    });
  }

  // -- overview ----------------------------------------------------------------
  /* The top of the overview: is it working?  Each part links to its page. */
  function waited(q) {
    if (!q.ready) return "–";
    return q.oldest_age == null ? "unknown" : secs(q.oldest_age);
  }
  function health() {
    live(function () {
      return api("/api/status").then(function (s) {
        var errors = s.errors || {};
        var w = s.workers;
        $("h-workers").textContent = w ? num(w.online) + " online" : "?";
        $("h-workers-sub").textContent = w ? num(w.offline) + " offline in the last hour" : errors.workers;
        $("h-workers-card").className = "card " + (w && w.online ? "ok" : "bad");
        var queues = s.queues || [];
        var ready = queues.reduce(function (n, q) { return n + q.ready; }, 0);
        var ages = queues.filter(function (q) { return q.ready; }).map(function (q) { return q.oldest_age; });
        var oldest = ages.some(function (a) { return a == null; }) ? null
          : ages.reduce(function (m, a) { return Math.max(m, a); }, 0);
        $("h-waiting").textContent = s.queues ? num(ready) : "?";
        $("h-oldest").textContent = !s.queues ? errors.queues
          : !ready ? "nothing waiting" : "oldest waited " + (oldest == null ? "unknown" : secs(oldest));
        $("h-dead").textContent = s.dead_letters == null ? "?" : num(s.dead_letters);
        $("h-dead-sub").textContent = s.dead_letters ? "replay or discard them" : "none";
        $("h-dead-card").className = "card " + (s.dead_letters ? "warn" : "ok");
        var b = s.beat;
        $("h-beat").textContent = b ? (b.leader || "none") : "?";
        $("h-beat-sub").textContent = !b ? errors.beat
          : b.leader ? num(b.entries) + " entries" : (b.entries ? "beat is not running" : "no periodic entries");
        $("h-beat-card").className = "card " + (b && (b.leader || !b.entries) ? "ok" : "warn");
        var problems = Object.keys(errors).map(function (k) { return k + ": " + errors[k]; });
        $("h-errors").hidden = !problems.length;
        $("h-errors").textContent = problems.length ? "Could not read " + problems.join("; ") : "";
        fill(document.querySelector("#h-queues tbody"), queues.map(function (q) {
          return h("tr", {}, td(h("a", { href: "/tasks?queue=" + encodeURIComponent(q.queue), text: q.queue })),
            td(num(q.ready), "n"), td(waited(q), "n"), td(num(q.delayed), "n"), td(num(q.inflight), "n"),
            td(h("a", { href: "/dead-letters", text: num(q.dead) }), "n"));
        }), s.queues ? "no queue has held a message yet" : "queues unknown: " + errors.queues);
        fill(document.querySelector("#h-worker-list tbody"), ((w && w.items) || []).map(function (x) {
          return h("tr", { class: x.online ? "" : "offline" },
            td(h("span", { class: "badge " + (x.online ? "s-success" : "s-offline"), text: x.online ? "online" : "offline" })),
            td(h("a", { href: "/workers", class: "mono", text: x.id })), td((x.queues || []).join(", ")),
            td(num(x.active_count), "n"), td(ago(x.last_seen)));
        }), "no worker has reported in the last hour");
        var zone = (b && b.timezone) || "UTC";
        fill(document.querySelector("#h-ticks tbody"), ((b && b.next) || []).map(function (t) {
          return h("tr", {}, td(t.name), td(t.task), td(whenIn(Date.parse(t.next_run) / 1000, zone)));
        }), b ? "no tick planned" : "beat unknown: " + errors.beat);
      });
    });
  }

  function overview() {
    health();
    var refresh = live(function () {
      return api("/api/overview?window=" + windowChoice).then(function (o) {
        var t = o.totals;
        $("c-throughput").textContent = o.throughput_per_minute.toFixed(1);
        $("c-success").textContent = num(t.SUCCESS);
        $("c-success-rate").textContent = pct(o.rates.success) + " of runs";
        $("c-failure").textContent = num(t.FAILURE);
        $("c-failure-rate").textContent = pct(o.rates.failure) + " failed or dead";
        $("c-retry").textContent = num(t.RETRY);
        $("c-retry-rate").textContent = pct(o.rates.retry) + " of runs";
        $("c-other").textContent = num(t.REVOKED) + " / " + num(t.DEAD);
        var rt = o.latency.runtime, w = o.latency.wait;
        $("c-runtime").textContent = [rt.p50, rt.p95, rt.p99].map(secs).join(" / ");
        $("c-runtime-mean").textContent = "mean " + secs(rt.mean) + " over " + num(rt.count) + " runs";
        $("c-wait").textContent = [w.p50, w.p95, w.p99].map(secs).join(" / ");
        $("c-wait-mean").textContent = "mean " + secs(w.mean);
        $("step-hint").textContent = o.step === 60 ? "(tasks per minute)" : "(tasks per 10 minutes)";
        var times = o.series.map(function (p) { return p.t; });
        ConveyorChart.bars($("chart-throughput"), times, OUTCOMES.map(function (s) {
          return { name: LABELS[s], color: COLORS[s], values: o.series.map(function (p) { return p[s]; }) };
        }), { yFormat: function (v) { return String(Math.round(v)); } });
        var pick = function (key) { return o.series.map(function (p) { return p[key]; }); };
        ConveyorChart.lines($("chart-runtime"), times, [
          { name: "p50", color: "#2563eb", values: pick("runtime_p50") },
          { name: "p95", color: "#db2777", values: pick("runtime_p95") }], { yFormat: secs, height: 180 });
        ConveyorChart.lines($("chart-wait"), times, [
          { name: "p50", color: "#0891b2", values: pick("wait_p50") },
          { name: "p95", color: "#ea580c", values: pick("wait_p95") }], { yFormat: secs, height: 180 });
        fill(document.querySelector("#by-task tbody"), o.tasks.map(function (r) {
          return h("tr", {}, td(h("a", { href: "/tasks?name=" + encodeURIComponent(r.name), text: r.name })),
            td(num(r.total), "n"), td(num(r.SUCCESS), "n"), td(num(r.FAILURE), "n"), td(num(r.RETRY), "n"),
            td(num(r.REVOKED), "n"), td(num(r.DEAD), "n"), td(secs(r.runtime_p50), "n"),
            td(secs(r.runtime_p95), "n"), td(secs(r.wait_p50), "n"));
        }), "no task finished in this window");
      });
    });
    windowButtons(refresh);
  }

  // -- workers -----------------------------------------------------------------
  function workers() {
    live(function () {
      return api("/api/workers").then(function (doc) {
        var online = doc.workers.filter(function (w) { return w.online; }).length;
        $("workers-summary").textContent = online + " online, " + (doc.workers.length - online) + " offline";
        fill(document.querySelector("#workers tbody"), doc.workers.map(function (w) {
          var active = h("div", { class: "active" });
          (w.active || []).forEach(function (a) {
            active.appendChild(h("div", {}, taskLink(a.id), " ", h("span", { class: "muted", text: a.task })));
          });
          if (!(w.active || []).length) active.textContent = "idle";
          return h("tr", { class: w.online ? "" : "offline" },
            td(h("span", { class: "badge " + (w.online ? "s-success" : "s-offline"), text: w.online ? "online" : "offline" })),
            td(w.id, "mono"), td(w.hostname), td(w.pid, "n"), td(w.pool), td((w.queues || []).join(", ")),
            td(w.concurrency, "n"), td(active), td(num(w.processed), "n"), td(num(w.failed), "n"),
            td(mem(w.memory_kib), "n"), td(ago(w.last_seen)), td(when(w.started_at)));
        }), "no worker has reported in the last hour");
      });
    });
  }

  // -- queues ------------------------------------------------------------------
  function queues() {
    var charts = {};
    var refresh = live(function () {
      return api("/api/queues?window=" + windowChoice).then(function (doc) {
        fill(document.querySelector("#queues tbody"), doc.queues.map(function (q) {
          return h("tr", {}, td(q.queue), td(num(q.ready), "n"), td(waited(q), "n"), td(num(q.delayed), "n"),
            td(num(q.inflight), "n"), td(h("a", { href: "/dead-letters", text: num(q.dead) }), "n"));
        }), "no queue has held a message yet");
        var box = $("queue-charts");
        Object.keys(doc.history).sort().forEach(function (name) {
          if (!charts[name]) {
            charts[name] = h("div", { class: "chart" });
            box.appendChild(h("div", { class: "panel" }, h("h2", { text: name }), charts[name]));
          }
          var samples = doc.history[name];
          var times = samples.map(function (s) { return s.t; });
          var pick = function (k) { return samples.map(function (s) { return s[k]; }); };
          ConveyorChart.lines(charts[name], times, [
            { name: "ready", color: "#2563eb", values: pick("ready") },
            { name: "delayed", color: "#d97706", values: pick("delayed") },
            { name: "in flight", color: "#16a34a", values: pick("inflight") },
            { name: "dead", color: "#7c3aed", values: pick("dead") }],
            { height: 180, whole: true, yFormat: function (v) { return String(Math.round(v)); } });
        });
      });
    });
    windowButtons(refresh);
  }

  // -- tasks -------------------------------------------------------------------
  function localToUnix(value) { return value ? String(new Date(value).getTime() / 1000) : ""; }
  function tasks() {
    var form = $("search");
    var params = new URLSearchParams(location.search);
    ["id", "name", "state", "queue"].forEach(function (k) { if (params.get(k)) form.elements[k].value = params.get(k); });
    function query() {
      var q = new URLSearchParams();
      ["id", "name", "state", "queue"].forEach(function (k) { if (form.elements[k].value) q.set(k, form.elements[k].value.trim()); });
      ["since", "until"].forEach(function (k) { var v = localToUnix(form.elements[k].value); if (v) q.set(k, v); });
      return q;
    }
    var refresh = live(function () {
      var now = Date.now() / 1000;
      var running = api("/api/tasks/running").then(function (doc) {
        fill(document.querySelector("#running tbody"), doc.tasks.map(function (t) {
          return h("tr", {}, td(taskLink(t.id)), td(t.task), td(t.queue), td(t.worker, "mono"),
            td(secs(now - t.started_at)), td(t.progress != null ? bar(t.progress) : h("span", { class: "muted", text: t.state })));
        }), "no task is running");
      });
      var found = api("/api/tasks?" + query().toString()).then(function (doc) {
        fill(document.querySelector("#tasks tbody"), doc.tasks.map(function (t) {
          return h("tr", {}, td(taskLink(t.task_id)), td(t.name), td(badge(t.state)), td(t.queue),
            td(t.worker, "mono"), td(t.retries, "n"), td(when(t.started_at)), td(secs(t.runtime), "n"),
            td(secs(t.wait), "n"), td(when(t.updated_at)));
        }), "no task matches");
        var more = $("t-more");
        more.hidden = doc.complete !== false;
        more.textContent = doc.complete === false ? "Searched the " + num(doc.searched) +
          " most recent tasks; older ones may match too: set Until to " + when(doc.oldest) + " to search further back." : "";
      });
      return Promise.all([running, found]);
    });
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var q = query();
      history.replaceState(null, "", "/tasks" + (q.toString() ? "?" + q.toString() : ""));
      refresh();
    });
  }

  // -- one task ----------------------------------------------------------------
  function fact(dl, label, value) {
    dl.appendChild(h("dt", { text: label }));
    var dd = h("dd");
    if (value != null && typeof value === "object") dd.appendChild(value); else dd.textContent = value == null ? "–" : String(value);
    dl.appendChild(dd);
  }
  function task() {
    var id = $("task").dataset.taskId;
    var refresh = live(function () {
      return api("/api/tasks/" + encodeURIComponent(id)).then(function (t) {
        $("t-missing").hidden = true;
        var state = $("t-state");
        state.textContent = t.state;
        state.className = "badge s-" + String(t.state).toLowerCase();
        var facts = $("t-facts");
        facts.textContent = "";
        fact(facts, "Name", t.name);
        fact(facts, "Queue", t.queue);
        fact(facts, "Worker", t.worker || t.worker_host);
        fact(facts, "Retries", t.retries);
        fact(facts, "Sent", when(t.sent_at));
        fact(facts, "Started", when(t.started_at || t.date_started));
        fact(facts, "Finished", when(t.done_at || t.date_done));
        fact(facts, "Run time", secs(t.runtime));
        fact(facts, "Queue wait", secs(t.wait));
        if (t.revoked) fact(facts, "Revoked", "yes");
        var progress = $("t-progress");
        progress.textContent = "";
        if (t.progress != null && ["SUCCESS", "FAILURE", "REVOKED"].indexOf(t.state) < 0) progress.appendChild(bar(t.progress));
        var fam = $("t-family");
        fam.textContent = "";
        fact(fam, "Parent", t.parent_id ? taskLink(t.parent_id) : null);
        fact(fam, "Root", t.root_id && t.root_id !== id ? taskLink(t.root_id) : null);
        var kids = h("div");
        (t.children || []).forEach(function (c) { kids.appendChild(h("div", {}, taskLink(c.task_id), " ", badge(c.state), " ", h("span", { class: "muted", text: c.name || "" }))); });
        fact(fam, "Children", (t.children || []).length ? kids : null);
        if (t.group) {
          var members = h("div", {}, h("div", { class: "muted", text: "group " + t.group.group_id }));
          t.group.members.forEach(function (c) { members.appendChild(h("div", {}, taskLink(c.task_id), " ", badge(c.state))); });
          fact(fam, "Group / chord", members);
        }
        $("t-args").textContent = "args: " + pretty(t.args) + "\nkwargs: " + pretty(t.kwargs);
        var failed = t.state === "FAILURE" || t.state === "RETRY";
        $("t-result-title").textContent = failed ? "Exception" : (t.state === "PROGRESS" ? "Progress meta" : "Result");
        $("t-result").textContent = failed && t.exc_type ? t.exc_type + ": " + t.result : pretty(t.result);
        var whole = $("t-whole");
        whole.hidden = !t.truncated;
        whole.href = "/api/tasks/" + encodeURIComponent(id) + "/record";
        $("t-traceback-panel").hidden = !t.traceback;
        $("t-traceback").textContent = t.traceback || "";
        fill(document.querySelector("#t-timeline tbody"), (t.timeline || []).map(function (e) {
          return h("tr", {}, td(when(e.ts)), td(badge(e.kind)), td(e.detail), td(e.worker, "mono"));
        }), "no events recorded yet");
      }, function (err) {
        if (err.status === 404) { $("t-missing").hidden = false; $("t-state").textContent = "unknown"; return; }
        throw err;
      });
    });
    document.querySelectorAll("[data-action]").forEach(function (button) {
      button.addEventListener("click", function () {
        var verb = button.dataset.action;
        var question = { retry: "Send this task again with the same arguments?",
                         revoke: "Revoke this task? It will be skipped if it has not started.",
                         terminate: "Terminate this task? A running task is killed." }[verb];
        if (!window.confirm(question)) return;
        post("/api/tasks/" + encodeURIComponent(id) + "/" + verb).then(function (doc) {
          if (doc.new_task_id) toast("Sent again as", false, doc.new_task_id);
          else toast("Task " + (verb === "revoke" ? "revoked" : "terminated") + ".");
          refresh();
        }, function (err) { toast(err.message, true); });
      });
    });
  }

  // -- dead letters --------------------------------------------------------------
  function deadLetters() {
    var refresh;
    function act(verb, queue, ids) {
      var what = ids ? "this message" : "every dead letter in " + queue;
      if (!window.confirm((verb === "replay" ? "Replay " : "Discard ") + what + "?")) return;
      post("/api/dead-letters/" + verb, { queue: queue, ids: ids }).then(function (doc) {
        toast(verb === "replay" ? "Replayed " + doc.replayed + "." : "Discarded " + doc.discarded + ".");
        refresh();
      }, function (err) { toast(err.message, true); });
    }
    refresh = live(function () {
      return api("/api/dead-letters").then(function (doc) {
        var queues = {};
        fill(document.querySelector("#dead tbody"), doc.dead_letters.map(function (d) {
          queues[d.queue] = (queues[d.queue] || 0) + 1;
          var whole = "/api/dead-letters/body?queue=" + encodeURIComponent(d.queue) + "&id=" + encodeURIComponent(d.id);
          var details = h("details", {}, h("summary", { text: d.reason }), h("pre", { text: d.body }),
            d.truncated ? h("a", { href: whole, class: "download", text: "shown cut short: download the whole message (" + num(d.size) + " bytes)" }) : "");
          return h("tr", {}, td(d.task_id ? taskLink(d.task_id) : d.id, "mono"), td(d.task), td(d.queue),
            td(details, "reason"), td(when(d.failed_at)),
            td(h("div", { class: "row-actions" },
              h("button", { type: "button", "data-id": d.id, onclick: function () { act("replay", d.queue, [d.id]); }, text: "Replay" }),
              h("button", { type: "button", class: "danger", onclick: function () { act("discard", d.queue, [d.id]); }, text: "Discard" })), "admin-only"));
        }), "no dead letters");
        var bulk = $("dl-bulk");
        bulk.textContent = "";
        Object.keys(queues).sort().forEach(function (q) {
          bulk.appendChild(h("button", { type: "button", onclick: function () { act("replay", q, null); }, text: "Replay all in " + q }));
          bulk.appendChild(h("button", { type: "button", class: "danger", onclick: function () { act("discard", q, null); }, text: "Discard all in " + q }));
        });
      });
    });
  }

  // -- schedules -----------------------------------------------------------------
  function schedules() {
    live(function () {
      return api("/api/schedules").then(function (doc) {
        $("b-holder").textContent = doc.holder || "nobody (beat is not running)";
        var zone = doc.timezone || "UTC";
        var iso = function (s) { return s ? whenIn(Date.parse(s) / 1000, zone) : "–"; };
        $("b-alive").textContent = doc.alive_at ? "last pass " + iso(doc.alive_at) : "";
        $("b-tz").textContent = zone;
        $("b-policy").textContent = doc.missed_policy ? "missed ticks: " + doc.missed_policy : "";
        $("b-scheduler").textContent = doc.scheduler || "–";
        $("b-scheduler-from").textContent = doc.scheduler_from === "running beat"
          ? "as the running beat uses it" : "from the settings (no beat has run yet)";
        fill(document.querySelector("#entries tbody"), (doc.entries || []).map(function (e) {
          return h("tr", {}, td(e.name), td(e.task), td(e.schedule, "mono"),
            td(e.enabled === false ? "no" : "yes"), td(iso(e.last_run_at)), td(iso(e.next_run)),
            td(e.total_run_count == null ? "–" : num(e.total_run_count), "n"));
        }), "no periodic entries");
      });
    });
  }

  var pages = { overview: overview, workers: workers, queues: queues, tasks: tasks, task: task,
                "dead-letters": deadLetters, schedules: schedules };
  if (pages[PAGE]) pages[PAGE]();
})();
