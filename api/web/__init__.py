"""The HTTP face of the service: the app, its routes, middleware, auth and schemas."""
