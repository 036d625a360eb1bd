"""De-identification and synthesis, as a pure library: no Flask, no database.

The hub hands it DataFrames and hints; ``cleanroom deid FILE`` uses it alone.
"""
