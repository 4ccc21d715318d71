// Stagely's own script (served from the binary; the CSP allows no inline script).
// Copy buttons: <button data-copy="element-id">.
document.addEventListener("click", function (e) {
  var b = e.target.closest("[data-copy]");
  if (!b) return;
  var el = document.getElementById(b.getAttribute("data-copy"));
  if (!el || !navigator.clipboard) return;
  navigator.clipboard.writeText(el.textContent.trim()).then(function () {
    b.textContent = "Copied";
  });
});
// Keep a live log scrolled to the bottom while the reader is at the bottom.
document.addEventListener("htmx:wsAfterMessage", function () {
  var log = document.getElementById("log");
  if (log && log.scrollHeight - log.scrollTop - log.clientHeight < 80) {
    log.scrollTop = log.scrollHeight;
  }
});
