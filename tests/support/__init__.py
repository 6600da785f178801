"""Test helpers shared by tests and benches (not shipped in any image).

Stand-ins (each module's docstring says what it stands in for and what it follows):

- ``support.reports``: many devices' status reports (the sync agent's report shape), for
  the dashboard's tests and ``bench/bench_dashboard.py``.
"""
