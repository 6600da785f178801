"""The local stack: real emulators and servers started on loopback for tests and
``edgefleet up``. Each component is a small class with ``start``/``stop``; see
docs/local-stack.md."""
