// keygate console: progressive enhancement only. Every page works without
// this file; with it, a token can be copied with one click and a few forms
// ask for confirmation first. Loaded from 'self' (the CSP allows nothing
// inline).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const target = document.getElementById(button.dataset.copy);
    if (!target) continue;
    button.hidden = false;
    button.addEventListener("click", async () => {
      let copied = false;
      try {
        await navigator.clipboard.writeText(target.value);
        copied = true;
      } catch (_) {
        target.select();
        copied = document.execCommand("copy");
      }
      button.textContent = copied ? "Copied" : "Select and copy";
      setTimeout(() => { button.textContent = "Copy"; }, 2500);
    });
  }
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
});
