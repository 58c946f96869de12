"""HTTP entrypoint: the Flask app factory is `web.app.create_app`."""
