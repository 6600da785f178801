"""Sub-commands of the ``edgefleet`` console command (see :mod:`edgefleet.operator.cli`)."""
