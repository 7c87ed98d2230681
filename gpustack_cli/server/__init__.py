"""The HTTP plumbing every protocol shares: the aiohttp application and its middlewares, the
request context, errors, server-sent events and JSON on the wire. It knows no protocol: each
protocol package adds its routes and says how its errors look."""
