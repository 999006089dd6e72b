// Keeps the order page's status current without a reload.
(function () {
  var script = document.currentScript;
  var url = script && script.getAttribute("data-status-url");
  if (!url) return;
  var headline = document.querySelector("[data-order-headline]");
  var detail = document.querySelector("[data-order-detail]");
  var steps = document.querySelector("[data-order-steps]");
  var delay = 2000;

  function render(state) {
    headline.textContent = state.headline;
    detail.textContent = state.detail;
    steps.innerHTML = "";
    state.steps.forEach(function (step) {
      var item = document.createElement("li");
      item.className = step.state;
      item.textContent = step.label;
      steps.appendChild(item);
    });
  }

  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (state) {
        if (state) render(state);
        if (!state || !state.final) {
          delay = Math.min(delay * 1.2, 10000);
          setTimeout(poll, delay);
        }
      })
      .catch(function () { setTimeout(poll, 10000); });
  }
  setTimeout(poll, delay);
})();
