"""A tiny Django app whose views exercise the pool from inside requests."""
