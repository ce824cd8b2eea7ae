// The fleet dashboard's own script: relative times, copy buttons,
// confirmations, keyboard shortcuts, the link health charts (uPlot), the
// terminal (xterm.js over a websocket) and the recording player (xterm.js
// fed with an asciicast v2 file). No inline script and no eval: the
// pages' Content-Security-Policy forbids both.
(function () {
  "use strict";

  // xterm.js and uPlot create <style> elements; the policy lets through
  // only those that carry the page's nonce, which this script's own tag
  // holds. Every style element created from now on gets it.
  var nonce = document.currentScript && document.currentScript.nonce;
  if (nonce) {
    var create = Document.prototype.createElement;
    Document.prototype.createElement = function (tag, options) {
      var el = create.call(this, tag, options);
      if (String(tag).toLowerCase() === "style") el.nonce = nonce;
      return el;
    };
  }

  // Relative times: <time datetime> shows "3 min ago", its title the
  // exact time.
  function relative(ms) {
    var s = Math.round(ms / 1000), future = s < 0;
    s = Math.abs(s);
    var out;
    if (s < 45) out = s + " s";
    else if (s < 2700) out = Math.round(s / 60) + " min";
    else if (s < 129600) out = Math.round(s / 3600) + " h";
    else out = Math.round(s / 86400) + " d";
    return future ? "in " + out : out + " ago";
  }
  function times(root) {
    var now = Date.now();
    (root || document).querySelectorAll("time[datetime]").forEach(function (t) {
      var at = Date.parse(t.getAttribute("datetime"));
      if (isNaN(at)) return;
      if (!t.title) t.title = t.textContent;
      t.textContent = relative(now - at);
    });
  }

  // Copy buttons: data-copy names the element whose text is copied.
  function copyText(text, button) {
    var done = function () {
      if (!button) return;
      button.classList.add("done");
      setTimeout(function () { button.classList.remove("done"); }, 1500);
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text); done(); });
    } else {
      fallbackCopy(text);
      done();
    }
  }
  function fallbackCopy(text) {
    var ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.className = "offscreen";
    document.body.appendChild(ta);
    ta.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing more to try */ }
    ta.remove();
  }
  document.addEventListener("click", function (e) {
    var b = e.target.closest("button.copy");
    if (!b) return;
    var src = document.querySelector(b.dataset.copy);
    if (src) copyText(src.textContent.trim(), b);
  });

  // Forms that ask first (removals).
  document.addEventListener("submit", function (e) {
    var f = e.target.closest("form.confirm");
    if (f && !window.confirm(f.dataset.confirm || "Are you sure?")) e.preventDefault();
  });

  // "/" goes to the search box.
  document.addEventListener("keydown", function (e) {
    if (e.key !== "/" || e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName) || t.closest(".xterm"))) return;
    var q = document.getElementById("q");
    if (q) { e.preventDefault(); q.focus(); q.select(); }
  });

  // Link health charts.
  var palette = { rtt: "#2457c5", loss: "#b3261e", online: "#1e7d34", reconnects: "#9a5b00", up: "#2457c5", down: "#7a3db8" };
  function bytesLabel(v) {
    if (v == null) return "";
    var units = ["B", "kB", "MB", "GB", "TB"], i = 0;
    while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return (i ? v.toFixed(1) : v.toFixed(0)) + " " + units[i];
  }
  function chartSpecs(d) {
    var bars = window.uPlot && uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 24] }) : undefined;
    return {
      rtt: { series: [{ label: "RTT ms", stroke: palette.rtt, width: 1.5, spanGaps: false }], data: [d.rtt_ms] },
      loss: {
        series: [{ label: "loss %", stroke: palette.loss, width: 1.5 }, { label: "online %", stroke: palette.online, width: 1.5 }],
        data: [d.loss_percent, d.online_percent]
      },
      reconnects: { series: [{ label: "reconnects", stroke: palette.reconnects, fill: "rgba(154,91,0,0.35)", paths: bars }], data: [d.reconnects] },
      bytes: {
        series: [{ label: "up", stroke: palette.up, width: 1.5, value: function (u, v) { return bytesLabel(v); } },
                 { label: "down", stroke: palette.down, width: 1.5, value: function (u, v) { return bytesLabel(v); } }],
        data: [d.bytes_up, d.bytes_down],
        axis: function (u, vals) { return vals.map(bytesLabel); }
      }
    };
  }
  function drawCharts(section, range) {
    var plots = section._plots || {};
    Object.keys(plots).forEach(function (k) { plots[k].destroy(); });
    section._plots = plots = {};
    section.setAttribute("aria-busy", "true");
    fetch(section.dataset.link + "?range=" + encodeURIComponent(range), { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error(r.status + " " + r.statusText); return r.json(); })
      .then(function (d) {
        var specs = chartSpecs(d);
        section.querySelectorAll(".chart").forEach(function (el) {
          el.textContent = "";
          var spec = specs[el.dataset.chart];
          if (!spec || !window.uPlot) return;
          var opts = {
            width: Math.max(el.clientWidth, 200), height: 170,
            series: [{}].concat(spec.series),
            scales: { x: { time: true } },
            axes: [{}, { size: 60, values: spec.axis }],
            legend: { live: true }
          };
          plots[el.dataset.chart] = new uPlot(opts, [d.x].concat(spec.data), el);
          var n = 0;
          spec.data.forEach(function (s) { s.forEach(function (v) { if (v != null) n++; }); });
          el.dataset.points = String(n);
        });
        section.dataset.drawn = range;
        section.removeAttribute("aria-busy");
      })
      .catch(function (err) {
        section.querySelectorAll(".chart").forEach(function (el) {
          el.textContent = "";
          var p = document.createElement("p");
          p.className = "empty";
          p.textContent = "The link history could not be read: " + err.message;
          el.appendChild(p);
        });
        section.removeAttribute("aria-busy");
      });
  }
  function charts() {
    var section = document.getElementById("charts");
    if (!section) return;
    var range = "hours";
    section.querySelectorAll("[data-range]").forEach(function (b) {
      b.addEventListener("click", function () {
        range = b.dataset.range;
        section.querySelectorAll("[data-range]").forEach(function (o) { o.setAttribute("aria-pressed", String(o === b)); });
        drawCharts(section, range);
      });
    });
    drawCharts(section, range);
    if (window.ResizeObserver) {
      var last = 0;
      new ResizeObserver(function () {
        var w = section.clientWidth;
        if (Math.abs(w - last) < 40) return;
        last = w;
        var plots = section._plots || {};
        Object.keys(plots).forEach(function (k) {
          var el = section.querySelector('[data-chart="' + k + '"]');
          if (el) plots[k].setSize({ width: Math.max(el.clientWidth, 200), height: 170 });
        });
      }).observe(section);
    }
  }

  // The terminal: xterm.js over a websocket to fleetd, which is the SSH
  // client. Binary frames carry the terminal's bytes both ways; text
  // frames carry JSON: resize from here, status and end from fleetd.
  function terminal() {
    var el = document.getElementById("terminal");
    if (!el || !window.Terminal) return;
    var status = document.getElementById("term-status");
    var term = new Terminal({ cursorBlink: true, scrollback: 10000, fontSize: 14,
      fontFamily: 'ui-monospace, SFMono-Regular, Menlo, "DejaVu Sans Mono", monospace' });
    var fit = new FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(el);
    fit.fit();
    window.dashTerm = term; // read by the browser tests
    function setStatus(text, cls) {
      status.textContent = text;
      status.className = "term-status" + (cls ? " " + cls : "");
      el.dataset.state = cls || "live";
    }
    var url = new URL(el.dataset.socket, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("cols", term.cols);
    url.searchParams.set("rows", term.rows);
    var ws = new WebSocket(url.toString());
    ws.binaryType = "arraybuffer";
    var enc = new TextEncoder();
    var ended = false;
    ws.onopen = function () { setStatus("Connected", "live"); term.focus(); };
    ws.onmessage = function (e) {
      if (typeof e.data !== "string") { term.write(new Uint8Array(e.data)); return; }
      var m;
      try { m = JSON.parse(e.data); } catch (err) { return; }
      if (m.type === "status") {
        if (m.state === "paused") setStatus(m.message || "The link to the device is down: waiting for it to come back. Nothing is lost.", "paused");
        else setStatus(m.message || "Connected", "live");
      } else if (m.type === "end") {
        ended = true;
        setStatus("Ended: " + (m.message || "the session closed"), "ended");
      }
    };
    ws.onclose = function (e) {
      if (!ended) setStatus("Disconnected" + (e.reason ? ": " + e.reason : ""), "ended");
      var again = document.getElementById("term-reconnect");
      if (again) again.hidden = false;
    };
    function send(bytes) { if (ws.readyState === 1) ws.send(bytes); }
    term.onData(function (d) { send(enc.encode(d)); });
    term.onBinary(function (d) {
      var b = new Uint8Array(d.length);
      for (var i = 0; i < d.length; i++) b[i] = d.charCodeAt(i) & 255;
      send(b);
    });
    term.onResize(function (s) { if (ws.readyState === 1) ws.send(JSON.stringify({ type: "resize", cols: s.cols, rows: s.rows })); });
    if (window.ResizeObserver) new ResizeObserver(function () { fit.fit(); }).observe(el);
    function copy() { var s = term.getSelection(); if (s) copyText(s); }
    function paste() {
      if (navigator.clipboard && navigator.clipboard.readText) {
        navigator.clipboard.readText().then(function (t) { term.paste(t); }, function () {
          setStatus("The browser did not let the page read the clipboard: paste with Ctrl+V (Cmd+V).", "live");
        });
      }
      term.focus();
    }
    term.attachCustomKeyEventHandler(function (e) {
      if (e.type !== "keydown" || !e.ctrlKey || !e.shiftKey) return true;
      if (e.code === "KeyC") { copy(); return false; }
      if (e.code === "KeyV") { paste(); return false; }
      return true;
    });
    document.getElementById("term-copy").addEventListener("click", function () { copy(); term.focus(); });
    document.getElementById("term-paste").addEventListener("click", paste);
    var again = document.getElementById("term-reconnect");
    if (again) again.addEventListener("click", function () { location.reload(); });
  }

  // The recording player: an asciicast v2 file fed to xterm.js, with
  // pause, speed and seeking. Pauses longer than two seconds are cut to
  // two.
  var maxIdle = 2;
  function player() {
    var el = document.getElementById("player");
    if (!el || !window.Terminal) return;
    var status = document.getElementById("player-status");
    var playBtn = document.getElementById("play");
    var speedSel = document.getElementById("speed");
    var seek = document.getElementById("seek");
    var clock = document.getElementById("clock");
    var term = new Terminal({ scrollback: 10000, fontSize: 14, disableStdin: true,
      fontFamily: 'ui-monospace, SFMono-Regular, Menlo, "DejaVu Sans Mono", monospace' });
    term.open(el);
    window.dashPlayer = term; // read by the browser tests
    var events = [], duration = 0, idx = 0, pos = 0, playing = false, timer = null, startedAt = 0, startPos = 0;
    function fmt(t) { t = Math.floor(t); return Math.floor(t / 60) + ":" + String(t % 60).padStart(2, "0"); }
    function show() {
      clock.textContent = fmt(pos) + " / " + fmt(duration);
      seek.value = duration ? Math.round(1000 * pos / duration) : 0;
    }
    function speed() { return parseFloat(speedSel.value) || 1; }
    function apply(e) {
      if (e[1] === "o") term.write(e[2]);
      else if (e[1] === "r") {
        var m = /^(\d+)x(\d+)$/.exec(e[2]);
        if (m) term.resize(+m[1], +m[2]);
      }
    }
    function tick() {
      timer = null;
      if (!playing) return;
      pos = startPos + (performance.now() - startedAt) / 1000 * speed();
      while (idx < events.length && events[idx][0] <= pos) apply(events[idx++]);
      show();
      if (idx >= events.length) {
        playing = false; pos = duration; show();
        playBtn.textContent = "Play again";
        // Finished once xterm.js has drawn what it was given.
        term.write("", function () {
          status.textContent = "Finished";
          el.dataset.state = "finished";
        });
        return;
      }
      var wait = (events[idx][0] - pos) / speed() * 1000;
      timer = setTimeout(tick, Math.max(0, Math.min(wait, 250)));
    }
    function play() {
      if (idx >= events.length) { jump(0); }
      playing = true; startedAt = performance.now(); startPos = pos;
      playBtn.textContent = "Pause"; status.textContent = "Playing"; el.dataset.state = "playing";
      tick();
    }
    function pause() {
      playing = false;
      if (timer) { clearTimeout(timer); timer = null; }
      playBtn.textContent = "Play"; status.textContent = "Paused"; el.dataset.state = "paused";
    }
    function jump(t) {
      term.reset(); idx = 0; pos = t;
      while (idx < events.length && events[idx][0] <= t) apply(events[idx++]);
      startedAt = performance.now(); startPos = pos; show();
    }
    playBtn.addEventListener("click", function () { if (playing) pause(); else play(); });
    speedSel.addEventListener("change", function () { if (playing) { startPos = pos; startedAt = performance.now(); } });
    seek.addEventListener("input", function () {
      var was = playing; pause(); jump(duration * seek.value / 1000); if (was) play();
    });
    el.addEventListener("keydown", function (e) { if (e.key === " ") { e.preventDefault(); playBtn.click(); } });
    fetch(el.dataset.cast, { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error(r.status + " " + r.statusText); return r.text(); })
      .then(function (text) {
        var lines = text.split("\n"), header = null, last = 0, shift = 0;
        for (var i = 0; i < lines.length; i++) {
          if (!lines[i].trim()) continue;
          var v;
          try { v = JSON.parse(lines[i]); } catch (err) { continue; }
          if (!header) { header = v; continue; }
          if (!Array.isArray(v) || typeof v[0] !== "number" || typeof v[1] !== "string") continue;
          var t = v[0] - shift;
          if (t - last > maxIdle) { shift += t - last - maxIdle; t = last + maxIdle; }
          last = t;
          events.push([t, v[1], String(v[2])]);
        }
        if (!header || header.version !== 2) throw new Error("not an asciicast v2 recording");
        if (header.width && header.height) term.resize(header.width, header.height);
        duration = events.length ? events[events.length - 1][0] : 0;
        el.dataset.events = String(events.length);
        status.textContent = "Ready";
        playBtn.disabled = false;
        show();
      })
      .catch(function (err) { status.textContent = "Cannot play: " + err.message; });
  }

  // A page in a hidden tab lets its live stream go, and opens a new one
  // when it is shown again: over HTTP/1.1 a browser holds at most six
  // connections to one host, and each live page keeps one.
  var parked = [];
  function visibility() {
    if (document.hidden) {
      document.querySelectorAll("[sse-connect]").forEach(function (el) {
        htmx.trigger(el, "htmx:beforeCleanupElement"); // the extension closes the stream
        el.dataset.live = "parked";
        parked.push(el);
      });
      return;
    }
    parked.forEach(function (el) {
      if (!document.body.contains(el)) return;
      var fresh = el.cloneNode(true);
      delete fresh.dataset.live;
      delete fresh.dataset.liveAt;
      el.replaceWith(fresh);
      htmx.process(fresh);
      times(fresh);
    });
    parked = [];
  }

  // A live update waits while a button is held down on the page: a click
  // whose press and release straddled a redraw would press one element and
  // release on its replacement, and the browser would drop the click. The
  // newest update for each region is kept and swapped in on release, after
  // the click has done what it does.
  var pressed = false, held = [];
  function release() {
    pressed = false;
    var updates = held;
    held = [];
    updates.forEach(function (u) {
      delete u.el.dataset.held;
      if (!document.body.contains(u.el)) return;
      htmx.swap(u.el, u.data, { swapStyle: u.el.getAttribute("hx-swap") || "innerHTML" });
      times(u.el);
    });
  }
  function hold(e) {
    if (!pressed) return;
    e.preventDefault();
    held = held.filter(function (u) { return u.el !== e.target; });
    held.push({ el: e.target, data: e.detail.data });
    e.target.dataset.held = "true";
  }

  function init() {
    times();
    charts();
    terminal();
    player();
    setInterval(times, 30000);
    document.addEventListener("visibilitychange", visibility);
    // Live regions swapped in by htmx get their relative times too.
    document.body.addEventListener("htmx:afterSettle", function (e) { times(e.target); });
    document.body.addEventListener("htmx:sseMessage", function (e) { times(e.target); });
    document.addEventListener("pointerdown", function () { pressed = true; }, true);
    document.addEventListener("pointerup", function () { setTimeout(release, 0); }, true);
    document.addEventListener("pointercancel", release, true);
    document.body.addEventListener("htmx:sseBeforeMessage", hold);
    // The live stream's state, on the element that holds it.
    document.body.addEventListener("htmx:sseOpen", function (e) {
      e.target.dataset.live = "open";
      // When the page became live, for the benchmark (tools/bench/dashbench).
      if (!e.target.dataset.liveAt) e.target.dataset.liveAt = String(Math.round(performance.now()));
    });
    document.body.addEventListener("htmx:sseError", function (e) { e.target.dataset.live = "error"; });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
