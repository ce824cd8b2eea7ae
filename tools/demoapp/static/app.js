// The demo app's page: a live event stream, a websocket echo and an
// upload, all through the fleet's tunnel.
"use strict";

fetch("whoami").then((r) => r.json()).then((w) => {
  document.getElementById("user").textContent = w.user || "an unknown user";
});

// firstEventMs is how long the first event took, from the stream's
// opening: the browser tests log it.
const eventsOpened = performance.now();
const events = new EventSource("events");
let count = 0;
events.addEventListener("tick", (e) => {
  count++;
  if (count === 1) { window.firstEventMs = performance.now() - eventsOpened; }
  document.getElementById("event-count").textContent = String(count);
  document.getElementById("last-event").textContent = e.data;
});

const proto = location.protocol === "https:" ? "wss:" : "ws:";
const ws = new WebSocket(proto + "//" + location.host + "/ws");
const status = document.getElementById("ws-status");
ws.addEventListener("open", () => { status.textContent = "open"; });
ws.addEventListener("close", () => { status.textContent = "closed"; });
ws.addEventListener("message", (e) => {
  const li = document.createElement("li");
  li.textContent = e.data;
  document.getElementById("echo-log").appendChild(li);
});
document.getElementById("echo-form").addEventListener("submit", (e) => {
  e.preventDefault();
  ws.send(document.getElementById("echo-input").value);
});

document.getElementById("upload-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const f = document.getElementById("upload-file").files[0];
  if (!f) { return; }
  const out = document.getElementById("upload-result");
  out.textContent = "uploading " + f.size + " bytes";
  fetch("upload", { method: "POST", body: f }).then((r) => r.text()).then((t) => { out.textContent = t.trim(); });
});
