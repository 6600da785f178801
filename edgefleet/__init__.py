"""edgefleet: ship ML model versions to fleets of edge devices as digest-pinned static Pods.

The ``edgefleet`` package is the shared core: the contracts that the cloud functions,
the device sync agent and the operator tooling all rely on (image references, bucket
layout, manifest sets and their signatures, the pod policy). It does no work at import
time; I/O lives in thin adapters (``edgefleet.cloud.storage``, ``edgefleet.cloud.registry``...).
"""

__version__ = "0.1.0"
