// One key an answer: a accept, r reject, u undo, j/k next/previous, 1-9 target face, o open the identity.
// Writes are POSTs with the token in a header; the page reads it from <body data-token>.
"use strict";
const token = document.body.dataset.token;
const items = Array.from(document.querySelectorAll(".item"));
let at = 0;

function select(index) {
  if (!items.length) return;
  at = Math.max(0, Math.min(index, items.length - 1));
  items.forEach((item, i) => item.classList.toggle("current", i === at));
  items[at].scrollIntoView({block: "nearest"});
  document.body.dataset.at = String(at);
}

async function post(path, body) {
  const response = await fetch(`${path}`, {
    method: "POST", headers: {"Content-Type": "application/json", "X-Review-Token": token},
    body: JSON.stringify(body)});
  return [response.status, await response.json()];
}

async function decide(kind, value) {
  const item = items[at];
  // a photo's item answers about the photo; an identity's (a pair, a cluster, a class word) about the identity
  const image = (item && (item.dataset.aKind || "accept") === "accept" && item.dataset.image) || null;
  if (!item || (kind === "target_face" && !image)) return;
  const [status, answer] = await post("/api/decide",
    {identity: item.dataset.identity, image: image, kind: kind, value: value});
  const shown = item.querySelector(".decided");
  if (status !== 200) { shown.textContent = answer.error; return; }
  shown.textContent = kind === "undo" ? "" : (value === undefined ? kind : `${kind} ${value}`);
  document.getElementById("pending").textContent = answer.pending;
  document.body.dataset.answered = String(Number(document.body.dataset.answered || 0) + 1);
  if (kind !== "undo") next();
}

// What `a` and `r` mean is the item's (pipeline/review/answers.py): accept and reject for a photo, a class word,
// a merge or a confirmation for an identity's item, or opening the identity's page.
function answer(key) {
  const item = items[at];
  if (!item) return;
  const kind = item.dataset[`${key}Kind`] || (key === "a" ? "accept" : "reject");
  if (kind === "open") { location.href = item.querySelector("a.who").href; return; }
  decide(kind, item.dataset[`${key}Value`] || undefined);
}

function next() {
  if (at < items.length - 1) { select(at + 1); return; }
  const link = document.getElementById("next-page");
  if (link) location.href = link.href;
}

function previous() {
  if (at > 0) { select(at - 1); return; }
  const link = document.getElementById("previous-page");
  if (link) location.href = link.href;
}

document.addEventListener("keydown", (event) => {
  if (event.target.matches("input, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (key === "j") next();
  else if (key === "k") previous();
  else if (key === "a" || key === "r") answer(key);
  else if (key === "u") decide("undo");
  else if (key === "o" && items[at]) location.href = items[at].querySelector("a.who").href;
  else if (/^[1-9]$/.test(key) && items[at] && Number(key) <= Number(items[at].dataset.faces)) {
    decide("target_face", Number(key) - 1);
  } else return;
  event.preventDefault();
});

items.forEach((item, i) => item.addEventListener("click", () => select(i)));

// Decisions about a whole identity: its class word, a merge into the identity it may be.
document.querySelectorAll("button[data-kind]").forEach((button) => button.addEventListener("click", async () => {
  const [status, answer] = await post("/api/decide",
    {identity: button.dataset.identity, kind: button.dataset.kind, value: button.dataset.value});
  const shown = button.parentElement.querySelector(".decided");
  shown.textContent = status === 200 ? `${button.dataset.kind} ${button.dataset.value}` : answer.error;
  if (status === 200) document.getElementById("pending").textContent = answer.pending;
}));

async function follow(started) {
  const progress = document.getElementById("progress");
  progress.hidden = false;
  for (;;) {
    const state = await (await fetch(`/api/apply?token=${encodeURIComponent(token)}`)).json();
    progress.textContent = state.lines.join("\n");
    document.getElementById("pending").textContent = state.pending;
    if (!state.running && state.started >= started) {
      progress.textContent += `\napply finished (exit code ${state.returncode})`;
      document.body.dataset.applied = String(state.returncode);
      return;
    }
    await new Promise((done) => setTimeout(done, 500));
  }
}

document.getElementById("apply").addEventListener("click", async () => {
  const [status, state] = await post("/api/apply", {});
  if (status === 202 || status === 409) follow(state.started);
});

select(0);
document.body.dataset.ready = "1";
