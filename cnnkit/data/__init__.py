"""Datasets by name, training transforms by name, and the LightningDataModule over them."""
