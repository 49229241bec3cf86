"""The aggregation server: the Flower ServerApp, its strategy and the SuperLink side."""
