"""Models served elsewhere: the HTTP client for upstream servers, forwarding requests to them,
their health checks, and the Generic Proxy (`/model/proxy/...`)."""
