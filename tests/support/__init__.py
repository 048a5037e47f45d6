"""Helpers the test modules share (servers, data, environment), importable as ``tests.support``."""
