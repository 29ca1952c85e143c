// Starts Swagger UI on /docs. A served file, not an inline script, so the page's
// Content-Security-Policy can forbid inline scripts (see mobile_api/docs.py).
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({ url: root.dataset.specUrl, dom_id: "#swagger-ui" });
});
