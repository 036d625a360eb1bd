// Live progress of a dataset version: polls its status and reloads the page when the
// pipeline moves on. No inline script (the CSP forbids it): the element carries the URL.
(function () {
  const box = document.querySelector("[data-status-url]");
  if (!box) return;
  const bar = box.querySelector("progress");
  const label = box.querySelector("[data-progress-label]");
  const url = box.getAttribute("data-status-url");
  const initial = box.getAttribute("data-state");
  async function poll() {
    try {
      const resp = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (resp.ok) {
        const s = await resp.json();
        bar.value = s.progress;
        label.textContent = s.progress + "% " + (s.message || "");
        if (s.state !== initial || !s.active) { window.location.reload(); return; }
      }
    } catch (e) { /* the next poll will try again */ }
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 500);
})();
