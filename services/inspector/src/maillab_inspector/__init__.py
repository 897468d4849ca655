"""maillab's inspector: it shows what the lab received."""
