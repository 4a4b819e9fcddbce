/*
 * Conveyor progress bars: polls a task's progress JSON and draws it.
 *
 * Every element with data-conveyor-progress="<url>" (what {% progress_bar %}
 * renders) starts by itself.  For hand-made markup, as with celery-progress:
 *   ConveyorProgressBar.initProgressBar(url, {progressBarId: "progress-bar",
 *     progressBarMessageId: "progress-bar-message", onSuccess, onError, onProgress})
 * Each poll waits for the previous answer; polling stops when the task is
 * complete, when the server says 404 (not this session's task), or after
 * repeated network errors.  The container also gets a "conveyor:progress"
 * event with the JSON as its detail, and data-state set to the task's state.
 */
(function () {
  "use strict";

  var MAX_ERRORS = 5;

  function percentOf(progress) {
    var value = Number(progress && progress.percent);
    return isFinite(value) ? Math.max(0, Math.min(100, value)) : 0;
  }

  function messageFor(data) {
    var progress = data.progress || {};
    if (data.complete && data.success) { return "Done"; }
    if (data.complete) { return "Failed: " + String(data.result || data.state); }
    if (data.state === "RETRY") { return "Retrying: " + String(data.result || ""); }
    if (progress.pending) { return "Waiting to start…"; }
    var text = progress.current + " of " + progress.total + " (" + percentOf(progress) + "%)";
    return progress.description ? text + " — " + progress.description : text;
  }

  function Bar(url, options) {
    this.url = url;
    this.options = options || {};
    this.container = options.container || null;
    this.track = options.track;
    this.fill = options.fill;
    this.message = options.message;
    this.interval = options.pollInterval || 500;
    this.errors = 0;
  }

  Bar.prototype.draw = function (state, percent, text) {
    if (this.container) { this.container.setAttribute("data-state", state); }
    if (this.fill) { this.fill.style.width = percent + "%"; }
    if (this.track) {
      this.track.setAttribute("aria-valuenow", String(percent));
      this.track.setAttribute("aria-valuetext", text);
    }
    if (this.message) { this.message.textContent = text; }
  };

  Bar.prototype.show = function (data) {
    var text = messageFor(data);
    var done = data.complete && data.success;
    // A failed task keeps the bar where it stopped: 100 % would read as done.
    var percent = done ? 100 : (data.complete ? this.lastPercent || 0 : percentOf(data.progress));
    this.lastPercent = percent;
    this.draw(data.state, percent, text);
    var hook = done ? this.options.onSuccess : (data.complete ? this.options.onError
                                                              : this.options.onProgress);
    if (hook) { hook(this, data); }
    if (this.container) {
      this.container.dispatchEvent(new CustomEvent("conveyor:progress", {detail: data}));
    }
  };

  Bar.prototype.poll = function () {
    var bar = this;
    fetch(bar.url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (response.status === 404) {
          bar.draw("UNKNOWN", 0, "This task is unknown to this session.");
          return null;
        }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        if (data === null) { return; }
        bar.errors = 0;
        bar.show(data);
        if (!data.complete) { setTimeout(function () { bar.poll(); }, bar.interval); }
      })
      .catch(function () {
        bar.errors += 1;
        if (bar.errors >= MAX_ERRORS) {
          bar.draw("UNKNOWN", bar.lastPercent || 0, "Progress is not available right now.");
          return;
        }
        setTimeout(function () { bar.poll(); }, bar.interval * Math.pow(2, bar.errors));
      });
  };

  function fromContainer(container) {
    if (container.conveyorProgress) { return container.conveyorProgress; }
    var bar = new Bar(container.getAttribute("data-conveyor-progress"), {
      container: container,
      track: container.querySelector("[role=progressbar]"),
      fill: container.querySelector(".conveyor-progress-fill"),
      message: container.querySelector(".conveyor-progress-message")
    });
    container.conveyorProgress = bar;
    bar.poll();
    return bar;
  }

  function initProgressBar(url, options) {
    options = options || {};
    var fill = document.getElementById(options.progressBarId || "progress-bar");
    var settings = Object.assign({}, options, {
      fill: fill,
      track: fill && (fill.closest("[role=progressbar]") || fill),
      message: document.getElementById(options.progressBarMessageId || "progress-bar-message"),
      container: fill && fill.closest("[data-conveyor-progress]")
    });
    var bar = new Bar(url, settings);
    bar.poll();
    return bar;
  }

  function startAll() {
    var found = document.querySelectorAll("[data-conveyor-progress]");
    for (var i = 0; i < found.length; i += 1) { fromContainer(found[i]); }
  }

  window.ConveyorProgressBar = {initProgressBar: initProgressBar, startAll: startAll};
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", startAll);
  } else {
    startAll();
  }
}());
