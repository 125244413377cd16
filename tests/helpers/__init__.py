"""Helpers for the reliability tests: processes that cannot use io_uring."""
