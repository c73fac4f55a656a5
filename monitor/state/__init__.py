"""State that outlives a request: the label-join stores (memory, SQLite), the snapshot
codec and the persister that makes the worker's state durable."""
