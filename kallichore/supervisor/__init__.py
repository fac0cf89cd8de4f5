"""supervisor: kernel processes, sessions and the registry that owns them."""
