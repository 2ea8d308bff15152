"""Clinical reasoning: pure functions over plain data (no Flask, requests or SQLAlchemy)."""
