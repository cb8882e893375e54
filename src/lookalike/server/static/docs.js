// Starts Swagger UI on /docs (a file, not an inline script: the page's Content-Security-Policy
// allows scripts from the server only). The bundle is served from the server's own files.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
