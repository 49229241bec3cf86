"""Simulated federations on one machine: scenarios, the in-process engine, benchmarks."""
