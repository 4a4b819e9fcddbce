/* Tiny SVG charts for the monitor: line charts and stacked bar charts over time.
   No dependencies; every label is set with textContent (never innerHTML). */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var PAD = { left: 56, right: 12, top: 12, bottom: 26 };

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  /* The top of the y axis: four gridline steps of 1, 2, 2.5 or 5 times a power of ten
     (whole steps only for counts), so every label is a round number. */
  function niceMax(value, whole) {
    if (!(value > 0)) return whole ? 4 : 1;
    var raw = value / 4, exp = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = whole ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      var step = steps[i] * exp;
      if (whole && step < 1) continue;
      if (raw <= step) return step * 4;
    }
    return 40 * exp;
  }

  function clock(t) {
    var d = new Date(t * 1000);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  function frame(container, opts, times, maxY) {
    container.textContent = "";
    var width = Math.max(280, container.clientWidth || 600);
    var height = opts.height || 220;
    var svg = el("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height,
                          role: "img", class: "svgchart" }, container);
    var plotW = width - PAD.left - PAD.right, plotH = height - PAD.top - PAD.bottom;
    var fmt = opts.yFormat || function (v) { return String(Math.round(v * 100) / 100); };
    for (var g = 0; g <= 4; g++) {
      var y = PAD.top + plotH - (plotH * g) / 4;
      el("line", { x1: PAD.left, x2: width - PAD.right, y1: y, y2: y, class: "grid" }, svg);
      el("text", { x: PAD.left - 6, y: y + 4, class: "ylabel", "text-anchor": "end" }, svg)
        .textContent = fmt((maxY * g) / 4);
    }
    var n = times.length, every = Math.max(1, Math.ceil(n / 6));
    for (var i = 0; i < n; i += every) {
      var x = PAD.left + (plotW * (i + 0.5)) / Math.max(1, n);
      el("text", { x: x, y: height - 8, class: "xlabel", "text-anchor": "middle" }, svg)
        .textContent = clock(times[i]);
    }
    return { svg: svg, plotW: plotW, plotH: plotH, fmt: fmt };
  }

  function legend(container, series) {
    var box = document.createElement("div");
    box.className = "legend";
    series.forEach(function (s) {
      var item = document.createElement("span");
      var sw = document.createElement("i");
      sw.style.background = s.color;
      item.appendChild(sw);
      item.appendChild(document.createTextNode(s.name));
      box.appendChild(item);
    });
    container.appendChild(box);
  }

  /* series: [{name, color, values: [number|null, ...]}] aligned with times. */
  function lines(container, times, series, opts) {
    opts = opts || {};
    var maxY = 0;
    series.forEach(function (s) { s.values.forEach(function (v) { if (v != null && v > maxY) maxY = v; }); });
    maxY = niceMax(maxY, opts.whole);
    var f = frame(container, opts, times, maxY), n = times.length;
    series.forEach(function (s) {
      var d = "", pen = false;
      s.values.forEach(function (v, i) {
        if (v == null) { pen = false; return; }
        var x = PAD.left + (f.plotW * (i + 0.5)) / Math.max(1, n);
        var y = PAD.top + f.plotH - (f.plotH * v) / maxY;
        d += (pen ? " L" : " M") + x.toFixed(1) + " " + y.toFixed(1);
        pen = true;
        var dot = el("circle", { cx: x, cy: y, r: n > 80 ? 1.5 : 2.5, fill: s.color }, f.svg);
        el("title", {}, dot).textContent = s.name + " at " + clock(times[i]) + ": " + f.fmt(v);
      });
      if (d) el("path", { d: d, fill: "none", stroke: s.color, "stroke-width": 2 }, f.svg);
    });
    legend(container, series);
  }

  /* Stacked bars: series values are counts per time slot. */
  function bars(container, times, series, opts) {
    opts = opts || {};
    var totals = times.map(function (_, i) {
      return series.reduce(function (sum, s) { return sum + (s.values[i] || 0); }, 0);
    });
    var maxY = niceMax(Math.max.apply(null, totals.concat([0])), true);
    var f = frame(container, opts, times, maxY), n = times.length;
    var slot = f.plotW / Math.max(1, n), barW = Math.max(1, slot * 0.8);
    times.forEach(function (t, i) {
      var base = PAD.top + f.plotH, group = el("g", {}, f.svg), tip = [clock(t)];
      series.forEach(function (s) {
        var v = s.values[i] || 0;
        if (!v) return;
        var h = (f.plotH * v) / maxY;
        base -= h;
        el("rect", { x: PAD.left + slot * i + (slot - barW) / 2, y: base, width: barW,
                     height: Math.max(0.5, h), fill: s.color }, group);
        tip.push(s.name + ": " + f.fmt(v));
      });
      el("title", {}, group).textContent = tip.join("\n");
    });
    legend(container, series);
  }

  window.ConveyorChart = { lines: lines, bars: bars };
})();
