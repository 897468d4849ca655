"""maillab's agent: the CLI that puts mail into the lab."""
