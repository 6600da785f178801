"""Test helpers shared by tests and benches (not shipped in any image)."""
