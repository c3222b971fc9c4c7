"""Training translator graphs: setup, optimizer, state, the jitted step, the loop, checkpoints,
sharding, the workdir lock and metric writers."""
