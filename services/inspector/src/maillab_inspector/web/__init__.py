"""The inspector on the web: the JSON API under /api/v1 (api_v1.py) and the pages a person reads (pages.py).

Both only read the catalogue (catalogue.py), but for the API's tombstones, and read the
same model: the page and the API show a message from the same summary and detail. app.py
puts them together into one ASGI application, `create_app`, which `inspector serve` runs.
"""
