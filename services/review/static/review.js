// lema review: keyboard grading and the few requests the pages make (no framework, nothing from a CDN).
"use strict";

function typing(event) {
  const tag = (event.target && event.target.tagName) || "";
  return tag === "TEXTAREA" || tag === "INPUT" || tag === "SELECT";
}

async function send(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-Lema-Review": "1"},
    body: JSON.stringify(body),
  });
  let data = {};
  try { data = await response.json(); } catch (e) { /* an empty or non-JSON body */ }
  if (!response.ok) {
    const message = (data.error && data.error.message) || ("HTTP " + response.status);
    throw new Error(message);
  }
  return data;
}

function filtersOf(article) {
  const filters = {};
  new URLSearchParams(article.dataset.filters || "").forEach((value, key) => { filters[key] = value; });
  return filters;
}

function setupCorrection() {
  const article = document.getElementById("correction");
  if (!article) return;
  const status = document.getElementById("grade-status");
  const note = document.getElementById("note");
  let busy = false;

  async function grade(value) {
    if (busy) return;
    busy = true;
    status.textContent = "saving…";
    try {
      const saved = await send("/api/grades", {correction_id: article.dataset.id, grade: value,
                                               note: note.value, filters: filtersOf(article)});
      status.textContent = "Graded " + saved.grade + ".";
      document.body.dataset.lastGrade = saved.grade;
      if (saved.next_url) {
        window.location.assign(saved.next_url);
      } else {
        status.textContent = "Graded " + saved.grade + ". That was the last one in this queue.";
        busy = false;
      }
    } catch (error) {
      status.textContent = "Not saved: " + error.message;
      busy = false;
    }
  }

  async function undo() {
    if (busy) return;
    busy = true;
    try {
      const now = await send("/api/grades/undo", {correction_id: article.dataset.id});
      status.textContent = now.grade ? "Undone: your grade is " + now.grade + " again." : "Undone: not graded by you.";
    } catch (error) {
      status.textContent = "Nothing undone: " + error.message;
    }
    busy = false;
  }

  document.querySelectorAll(".grade-button").forEach((button) => {
    button.addEventListener("click", () => grade(button.dataset.grade));
  });
  document.getElementById("undo").addEventListener("click", undo);

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && typing(event)) { event.target.blur(); return; }
    if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    const grades = {"1": "excellent", "2": "good", "3": "poor"};
    if (grades[event.key]) { event.preventDefault(); grade(grades[event.key]); }
    else if (event.key === "j" && article.dataset.next) { window.location.assign(article.dataset.next); }
    else if (event.key === "k" && article.dataset.prev) { window.location.assign(article.dataset.prev); }
    else if (event.key === "n") { event.preventDefault(); note.focus(); }
    else if (event.key === "u") { event.preventDefault(); undo(); }
  });
}

function setupQueue() {
  const rows = Array.from(document.querySelectorAll("#queue tbody tr[data-href]"));
  if (!rows.length) return;
  let current = -1;
  function select(index) {
    if (current >= 0) rows[current].classList.remove("selected");
    current = Math.max(0, Math.min(rows.length - 1, index));
    rows[current].classList.add("selected");
    rows[current].scrollIntoView({block: "nearest"});
  }
  document.addEventListener("keydown", (event) => {
    if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "j") select(current + 1);
    else if (event.key === "k") select(current - 1);
    else if (event.key === "Enter" && current >= 0) window.location.assign(rows[current].dataset.href);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupCorrection();
  setupQueue();
});
