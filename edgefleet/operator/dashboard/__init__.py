"""``edgefleet dashboard``: a read-only web view of the fleet over the deploy bucket.

:func:`edgefleet.operator.dashboard.app.create_app` (app factory) serves HTML pages that
render themselves from the JSON API under ``/api/`` and refresh it every few seconds,
server-rendered SVG charts under ``/charts/``, and static files from the package (no
CDN). The data comes from a :class:`~edgefleet.operator.dashboard.service.FleetService`,
refreshed in the background; :mod:`.serve` runs it. Flask is imported only by ``app``, so
the rest (and the demo's hook) import without the ``dashboard`` extra. See
docs/dashboard.md.
"""
