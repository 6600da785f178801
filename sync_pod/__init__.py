"""The device sync agent: poll the channel's manifest set, verify, apply, report."""
