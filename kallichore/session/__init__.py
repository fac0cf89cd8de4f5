"""session: pure session state (status machine, execution queue)."""
