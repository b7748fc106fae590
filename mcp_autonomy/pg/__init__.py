"""The PostgreSQL backend: the store every replica shares (`MCP_AUTONOMY_DATABASE_URL`).

`schema` holds the versioned migrations and runs them under an advisory lock; `connect` turns the
URL into connections without ever logging it; `store` and `payment_store` implement the same
protocols as the embedded SQLite store; `leadership` elects one leader per loop on advisory locks
with a fencing epoch; `feed` fans events and shared-state changes out to every replica.
"""
