"""``edgefleet dashboard``: a read-only web view of the fleet over the deploy bucket.

:func:`create_app` (app factory) serves HTML pages that render themselves from the JSON
API under ``/api/`` and refresh it every few seconds, server-rendered SVG charts under
``/charts/``, and static files from the package (no CDN). The data comes from a
:class:`~edgefleet.operator.dashboard.service.FleetService`, refreshed in the background;
see docs/dashboard.md.
"""

from __future__ import annotations

from edgefleet.operator.dashboard.app import create_app

__all__ = ["create_app"]
