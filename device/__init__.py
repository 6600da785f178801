"""Device-side runtime adapters (kubelet, podman), the health gate, provisioning templates."""
