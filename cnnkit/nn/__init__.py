"""The networks: layers (norm schemes, activations, poolings, blocks), backbones, the classifier and its anatomy."""
