"""The grounded benchmark: methods x metrics over a dataset, resumable (runner), and its tables and figures (report)."""
