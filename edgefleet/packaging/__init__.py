"""Packaging a trained model (and the sync agent) into container images.

base_image     the local Python base image (mmdebstrap + podman import), cached
wheelhouse     host-built wheels for the image, so image builds need no network
context        fetch + validate a model package from GCS and assemble a build context
podman_builder Builder for the local stack: Docker Engine API of `podman system service`
cloudbuild     Builder for GCP: the equivalent Cloud Build request
"""
