"""Building blocks shared by every backbone: norms, activations, poolings, inits, blocks."""
