/* Presso console: live progress of running jobs, and the submit form's method switch. No dependencies. */
(function () {
  "use strict";
  var body = document.body;
  var pollMs = Math.max(500, 1000 * parseFloat(body.getAttribute("data-poll-s") || "2"));
  var seen = {};  // job id -> {stage, t0, f0}: the current stage's first sample, for an ETA

  function fmtEta(s) {
    if (!isFinite(s) || s < 0) return "";
    if (s < 90) return "~" + Math.round(s) + " s left in stage";
    return "~" + Math.round(s / 60) + " min left in stage";
  }

  function update(job) {
    var els = document.querySelectorAll('[data-job-id="' + job.id + '"]');
    var now = Date.now() / 1000;
    var s = seen[job.id];
    if (!s || s.stage !== job.stage) { s = seen[job.id] = {stage: job.stage, t0: now, f0: job.fraction}; }
    var eta = "";
    if (job.state === "running" && job.fraction > s.f0 && now > s.t0) {
      eta = fmtEta((1 - job.fraction) * (now - s.t0) / (job.fraction - s.f0));
    }
    Array.prototype.forEach.call(els, function (el) {
      var st = el.querySelector('[data-field="state"]');
      if (st) { st.textContent = job.state + (job.cancel_requested && job.state === "running" ? " (cancelling)" : "");
                st.className = "state state-" + job.state; }
      var root = el.id === "job-head" ? document : el;
      var bar = root.querySelector('[data-field="bar"]'); if (bar) bar.value = job.fraction;
      var stage = root.querySelector('[data-field="stage"]');
      if (stage) stage.textContent = job.stage || (job.state === "queued" ? "waiting" : "–");
      var pct = root.querySelector('[data-field="pct"]'); if (pct) pct.textContent = Math.round(job.fraction * 100) + "%";
      var e = root.querySelector('[data-field="eta"]'); if (e) e.textContent = eta;
      var q = root.querySelector('[data-field="queue"]');
      if (q) q.textContent = job.queue_position ? "position " + job.queue_position + " in the queue" : "";
      if (job.terminal) el.setAttribute("data-active", "0");
    });
    return job.terminal;
  }

  function poll() {
    var rows = document.querySelectorAll('[data-job-id][data-active="1"]');
    if (!rows.length) return;
    var ids = [];
    Array.prototype.forEach.call(rows, function (r) { var id = r.getAttribute("data-job-id"); if (ids.indexOf(id) < 0) ids.push(id); });
    fetch("/console/api/progress?ids=" + encodeURIComponent(ids.join(",")),
          {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) throw new Error(String(r.status)); return r.json(); })
      .then(function (data) {
        var finished = false;
        data.data.forEach(function (job) { if (update(job)) finished = true; });
        if (finished) { window.location.reload(); return; }  // metrics, report and downloads are rendered by the server
        window.setTimeout(poll, pollMs);
      })
      .catch(function () { window.setTimeout(poll, pollMs * 3); });
  }

  function methodSwitch() {
    var selects = document.querySelectorAll("select.method-select");
    Array.prototype.forEach.call(selects, function (sel) {
      var slot = sel.getAttribute("data-slot");
      function show() {
        var blocks = document.querySelectorAll('.method-fields[data-slot="' + slot + '"]');
        Array.prototype.forEach.call(blocks, function (b) { b.hidden = b.getAttribute("data-method") !== sel.value; });
      }
      sel.addEventListener("change", show);
      show();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    methodSwitch();
    window.setTimeout(poll, pollMs);
  });
})();
