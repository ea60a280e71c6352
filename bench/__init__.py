"""Benchmarks of crs4_cassandra against the loaders users would otherwise use."""
