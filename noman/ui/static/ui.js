// Noman status page: refresh the rows from /ui/api/overview, often while a
// rollout runs, rarely otherwise, never while the tab is hidden.
(function () {
  "use strict";
  var body = document.body;
  var url = body.getAttribute("data-poll");
  if (!url) { return; }
  var fast = Number(body.getAttribute("data-poll-active")) || 4000;
  var slow = Number(body.getAttribute("data-poll-idle")) || 20000;
  var live = document.getElementById("live");

  function apply(data) {
    var stageChanged = false;
    data.services.forEach(function (row) {
      var holders = document.querySelectorAll('[data-service="' + CSS.escape(row.name) + '"]');
      holders.forEach(function (holder) {
        holder.querySelectorAll("[data-field]").forEach(function (el) {
          var name = el.getAttribute("data-field");
          if (!(name in row.fields)) { return; }
          var target = el.querySelector("code") || el;
          if (target.textContent !== row.fields[name]) { target.textContent = row.fields[name]; }
          if (name in row.states) { el.setAttribute("data-state", row.states[name]); }
          if (el.hasAttribute("data-stage") && el.getAttribute("data-stage") !== row.states.stage) {
            // A new stage brings its own facts and actions (promote, abort).
            stageChanged = true;
          }
        });
      });
    });
    var wasActive = body.getAttribute("data-active") === "true";
    body.setAttribute("data-active", data.active ? "true" : "false");
    if (stageChanged && body.hasAttribute("data-reload-when-done")) {
      window.location.reload();
      return;
    }
    if (wasActive && !data.active && body.hasAttribute("data-reload-when-done")) {
      // The service page's history gains the finished rollout's outcome.
      window.location.reload();
      return;
    }
    if (live) {
      live.textContent = data.active ? "A rollout is in progress; this page updates itself." : "";
    }
  }

  function schedule() {
    window.setTimeout(tick, body.getAttribute("data-active") === "true" ? fast : slow);
  }

  function tick() {
    if (document.hidden) { schedule(); return; }
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (answer) {
        if (answer.status === 401) {
          if (live) { live.textContent = "Logged out: reload the page to log in again."; }
          return null;  // stop polling
        }
        if (!answer.ok) { throw new Error("status " + answer.status); }
        return answer.json().then(function (data) { apply(data); schedule(); });
      })
      .catch(function () { schedule(); });
  }

  schedule();
})();
