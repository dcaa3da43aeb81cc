// Tollgate dashboard: progressive enhancement only. Every page works
// without this file; it adds copy buttons and list filters.
"use strict";
document.addEventListener("click", function (ev) {
  var b = ev.target.closest("button[data-copy]");
  if (!b) return;
  var text = b.getAttribute("data-copy");
  var done = function () {
    b.textContent = "Copied";
    setTimeout(function () { b.textContent = "Copy"; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, function () { select(b); });
  } else {
    select(b);
  }
});
// Without clipboard access (plain http), select the text for Ctrl+C.
function select(b) {
  var code = b.previousElementSibling;
  if (!code) return;
  var r = document.createRange();
  r.selectNodeContents(code);
  var s = window.getSelection();
  s.removeAllRanges();
  s.addRange(r);
  b.textContent = "Press Ctrl+C";
}
document.addEventListener("input", function (ev) {
  var f = ev.target;
  if (!f.matches || !f.matches("input[data-filter]")) return;
  var list = document.querySelector(f.getAttribute("data-filter"));
  if (!list) return;
  var needle = f.value.trim().toLowerCase();
  list.querySelectorAll("li").forEach(function (li) {
    li.hidden = needle !== "" && li.textContent.toLowerCase().indexOf(needle) === -1;
  });
});
