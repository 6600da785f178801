"""Jinja2 Pod templates shipped with edgefleet (uploaded to the deploy bucket by bootstrap)."""
