"""A hospital site: the Flower ClientApp, its DP training round and the SuperNode side."""
