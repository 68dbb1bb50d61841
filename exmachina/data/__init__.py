"""The data a run learns from: the built-in XOR table, CSV files, and the Semeion digits that ship
with the package."""

from pathlib import Path

# The packaged copy of the UCI Semeion Handwritten Digit data (CC BY 4.0, see SEMEION.md): the file a
# semeion source reads when the config gives no data.path.
SEMEION_DATA = Path(__file__).with_name("semeion.data")
