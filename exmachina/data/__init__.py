"""The data a run learns from: the built-in XOR table, CSV files, and the Semeion digits that ship
with the package."""
