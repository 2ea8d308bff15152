"""The HTTP edge: Flask app factory, CDS Hooks API, OpenAPI, client authentication, web pages."""
