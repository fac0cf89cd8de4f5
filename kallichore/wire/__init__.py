"""wire: the Jupyter wire protocol, sans-io."""
