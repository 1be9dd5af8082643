"""Model families dia_tpu trains: each a package offering the same few names, the shared code asking for them."""
