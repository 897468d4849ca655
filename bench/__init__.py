"""maillab's benchmarks: `make bench` runs them and prints ratios measured side by side."""
