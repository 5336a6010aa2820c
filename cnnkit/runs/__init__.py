"""A run on disk: its directory and files, the verdict on a rerun, its lifecycle, checkpoints, atomic writes."""
