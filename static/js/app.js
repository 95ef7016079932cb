// Say so when an htmx request fails, instead of leaving the page as if nothing happened.
(function () {
  function show(text) {
    var box = document.getElementById("request-error");
    if (!box) return;
    box.textContent = text;
    box.hidden = false;
  }
  document.addEventListener("htmx:responseError", function (event) {
    show("Nothing was saved: the server answered " + event.detail.xhr.status +
         ". Reload the page and try again.");
  });
  document.addEventListener("htmx:sendError", function () {
    show("Nothing was saved: the server could not be reached. Check the connection and try again.");
  });
  document.addEventListener("htmx:beforeRequest", function () {
    var box = document.getElementById("request-error");
    if (box) box.hidden = true;
  });
})();
