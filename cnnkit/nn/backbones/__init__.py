"""CNN and MLP backbones. Each takes the input shape and class count from the dataset and its
norm / activation / pooling from the registry, so any scheme fits any backbone."""
