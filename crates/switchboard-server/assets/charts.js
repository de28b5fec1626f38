// Small SVG line charts for the dashboard's last 15 minutes (no library, works offline):
// axes with units, one polyline per series (gaps where a second has no value), a legend, and
// the values under the pointer on hover.
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var W = 600, H = 170, L = 52, R = 8, T = 10, B = 22;

  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function format(v, unit) {
    if (v === null || v === undefined || isNaN(v)) return "–";
    var s;
    if (Math.abs(v) >= 1e6) s = (v / 1e6).toFixed(1) + " M";
    else if (Math.abs(v) >= 1e4) s = (v / 1e3).toFixed(1) + " k";
    else if (Math.abs(v) >= 100 || v === Math.round(v)) s = String(Math.round(v));
    else s = v.toFixed(v < 1 ? 2 : 1);
    return s + (unit ? " " + unit : "");
  }

  // A "nice" upper bound for the axis: 1, 2 or 5 times a power of ten.
  function niceMax(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var m = v / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }

  function clock(ms) {
    var d = new Date(ms);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  /**
   * Draws `lines` ([{label, values, cls}], values aligned with `t`, Unix ms) into the `svg`
   * element, in `unit`; `legend` is the element that lists the series.
   */
  function draw(svg, legend, t, lines, unit) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    var n = t.length;
    var max = 0;
    lines.forEach(function (line) {
      line.values.forEach(function (v) { if (v !== null && v > max) max = v; });
    });
    max = niceMax(max);
    var x = function (i) { return L + (n <= 1 ? 0 : i / (n - 1) * (W - L - R)); };
    var y = function (v) { return T + (1 - v / max) * (H - T - B); };
    // Axes: 0, half and max; the first, middle and last sample's time.
    [0, max / 2, max].forEach(function (v) {
      el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }, svg);
      el("text", { x: L - 4, y: y(v) + 4, class: "tick", "text-anchor": "end" }, svg).textContent = format(v, unit);
    });
    if (n > 0) {
      [0, Math.floor((n - 1) / 2), n - 1].forEach(function (i) {
        var anchor = i === 0 ? "start" : i === n - 1 ? "end" : "middle";
        el("text", { x: x(i), y: H - 6, class: "tick", "text-anchor": anchor }, svg).textContent = clock(t[i]);
      });
    }
    lines.forEach(function (line) {
      // One polyline per run of values: a second without a value leaves a gap.
      var run = [];
      var flush = function () {
        if (run.length > 0) el("polyline", { points: run.join(" "), class: "series " + line.cls, "data-label": line.label }, svg);
        run = [];
      };
      line.values.forEach(function (v, i) {
        if (v === null || v === undefined) flush();
        else run.push(x(i).toFixed(1) + "," + y(v).toFixed(1));
      });
      flush();
    });
    // Each legend item also says what was drawn, for tests and scripts (no SVG geometry to
    // parse): data-label, and data-last / data-max, the series' last and highest value
    // (absent when it has no value in the window).
    legend.textContent = "";
    lines.forEach(function (line) {
      var item = document.createElement("span");
      item.className = "legend-item " + line.cls;
      item.textContent = line.label;
      item.setAttribute("data-label", line.label);
      var drawn = line.values.filter(function (v) { return v !== null && v !== undefined; });
      if (drawn.length > 0) {
        item.setAttribute("data-last", String(drawn[drawn.length - 1]));
        item.setAttribute("data-max", String(Math.max.apply(null, drawn)));
      }
      legend.appendChild(item);
    });
    // Hover: a cursor line and the values at the nearest sample.
    var cursor = el("line", { y1: T, y2: H - B, class: "cursor", visibility: "hidden" }, svg);
    var tip = el("text", { y: T + 10, class: "tip", visibility: "hidden" }, svg);
    svg.onmousemove = function (e) {
      if (n === 0) return;
      var box = svg.getBoundingClientRect();
      var px = (e.clientX - box.left) / box.width * W;
      var i = Math.max(0, Math.min(n - 1, Math.round((px - L) / (W - L - R) * (n - 1))));
      cursor.setAttribute("x1", x(i));
      cursor.setAttribute("x2", x(i));
      cursor.setAttribute("visibility", "visible");
      tip.textContent = new Date(t[i]).toLocaleTimeString() + "  " + lines.map(function (line) {
        return line.label + " " + format(line.values[i], unit);
      }).join("  ");
      var right = x(i) > W / 2;
      tip.setAttribute("x", right ? x(i) - 6 : x(i) + 6);
      tip.setAttribute("text-anchor", right ? "end" : "start");
      tip.setAttribute("visibility", "visible");
    };
    svg.onmouseleave = function () {
      cursor.setAttribute("visibility", "hidden");
      tip.setAttribute("visibility", "hidden");
    };
  }

  window.SwitchboardCharts = { draw: draw, format: format };
})();
