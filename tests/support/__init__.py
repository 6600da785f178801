"""Test helpers shared by tests and benches (not shipped in any image).

Stand-ins for parts that cannot run here (each module's docstring starts with
"Stand-in for" and cites what it follows):

* ``kubelet``: kubelet's static-pod file source (inotify watch as fsnotify sets it,
  relist every ``fileCheckFrequency``, glob-then-open read order) and its node API
  ``GET /pods`` (PodList, x509 client authentication), from ``pkg/kubelet/config/file*.go``.
* ``cloudbuild_api``: the Cloud Build REST API's ``projects.locations.builds.create``.
* ``reports``: many devices' status reports (the sync agent's report shape), for
  the dashboard's tests and ``bench/bench_dashboard.py``.
* ``recording_runtime``: the kubelet of a simulated device in the fleet simulator
  (records each folder handed over; ``device.runtime.KubeletRuntime``'s contract).
* ``process_runtime``: podman playing model-server Pods, for the hand-over test and
  bench (``device.podman.PodmanRuntime``'s reconcile contract).
"""
