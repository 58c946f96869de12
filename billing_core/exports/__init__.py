"""The ledger where finance's other data is: Parquet files per UTC day and table (parquet.py), written
by export runs (runs.py)."""
