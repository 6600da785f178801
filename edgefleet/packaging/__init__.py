"""Packaging a trained model (and the sync agent) into container images.

base_image     the lean local Python base image per arch (mmdebstrap extract + podman import)
wheelhouse     host-built wheels per arch (image builds need no network); role wheels
site           the images' Python trees, installed on the host for the target platform
support        which arches get images (x86_64, aarch64) and why not armv7l
context        fetch + validate a model package from GCS and assemble a build context
sync_image     the sync agent image (device role), every arch, one index
transfer       compressed bytes a device pulls, read from the registry's manifests
podman_builder Builder for the local stack: Docker Engine API of `podman system service`
cloudbuild     Builder for GCP: the equivalent Cloud Build request
"""
