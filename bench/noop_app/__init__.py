"""A bounded context that does nothing, for the benchmarks (loaded only when CATGA_EXTRA_APPS names it)."""
