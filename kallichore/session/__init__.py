"""session: pure session state (status machine, execution queue, outbox, spec and its validator)."""
