"""Benchmarks: ``benchmarks.suite.main(argv)`` runs the whole suite."""
