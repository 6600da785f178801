"""Test helpers shared by tests and benches (not shipped in any image).

Stand-ins for parts that cannot run here (each module's docstring starts with
"Stand-in for" and cites what it follows):

* ``cloudbuild_api``: the Cloud Build REST API's ``projects.locations.builds.create``.
"""
