"""Test helpers shared by tests and benches (not shipped in any image).

Stand-ins for parts that cannot run here (each module's docstring starts with
"Stand-in for" and cites what it follows):

* ``kubelet``: kubelet's static-pod file source (inotify watch as fsnotify sets it,
  relist every ``fileCheckFrequency``, glob-then-open read order) and its node API
  ``GET /pods`` (PodList, x509 client authentication), from ``pkg/kubelet/config/file*.go``.
* ``cloudbuild_api``: the Cloud Build REST API's ``projects.locations.builds.create``.
"""
