"""Test helpers shared by tests and benches (not shipped in any image).

Stand-ins (each module's docstring says what it stands in for and what it follows):

- ``recording_runtime``: the kubelet of a simulated device in the fleet simulator.
- ``process_runtime``: podman playing model-server Pods (hand-over test and bench).
"""
