"""The `molsub` command line, offline prediction and the SYNTHETIC study generator."""
