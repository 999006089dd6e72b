// Turns each before/after sample into one picture with a slider: plain on the left of the
// handle, upscaled on the right. Without this script both images stand side by side.
(function () {
  document.querySelectorAll("[data-sample]").forEach(function (figure) {
    var slider = figure.querySelector(".sample-slider");
    var input = slider && slider.querySelector("input[type=range]");
    var upscaled = figure.querySelector(".sample-upscaled img");
    if (!input || !upscaled) return;
    function show() {
      upscaled.style.clipPath = "inset(0 0 0 " + input.value + "%)";
      figure.style.setProperty("--split", input.value + "%");
      input.setAttribute("aria-valuetext", input.value + "% plain, " + (100 - input.value) + "% upscaled");
    }
    figure.classList.add("sample-js");
    slider.hidden = false;
    input.addEventListener("input", show);
    show();
  });
})();
