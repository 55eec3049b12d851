"""The lowest layer, which every other package may import: config schema types, atomic result files,
counter-based random streams, learning-rate schedules and the capture of state for checkpoints."""
