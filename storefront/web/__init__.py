"""The web side: thin blueprints that parse a request, call one service and render."""
