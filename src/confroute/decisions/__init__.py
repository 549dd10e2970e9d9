"""The decision log: record types (records.py), stores (store.py), the writer (log.py), feedback."""
