"""The issuer's HTTP layer: create_app(settings), dependencies, auth, error handlers, routers."""
