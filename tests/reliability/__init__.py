"""Reliability and security tests: fault injection, concurrency, fuzzing, secrets, offline."""
