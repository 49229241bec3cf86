"""fedaug: federated, privacy-preserving data augmentation (the common package)."""
