"""The web dashboard: an overview of every lab with live resource use, quick actions, a builder.

:mod:`~vboxlab.web.app` holds the routes, :mod:`~vboxlab.web.guard` who may use
them, :mod:`~vboxlab.web.metrics` the sampling, :mod:`~vboxlab.web.serve` the
server; the pages are static files in ``static/`` (no build step, no CDN).
"""
