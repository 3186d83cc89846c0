"""One generation and what it cached (Trace), and what is computed from it: visual relevance, token statistics,
per-head attention, token scores."""
