"""`python -m exmachina.bench`: how fast the process network is, and against what."""
