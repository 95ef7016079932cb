import pytest

from lib.spreadsheet import safe_cell, safe_row


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_a_cell_that_would_run_as_a_formula_is_escaped(start):
    assert safe_cell(f'{start}HYPERLINK("http://x","y")') == f'\'{start}HYPERLINK("http://x","y")'


def test_ordinary_cells_are_left_alone():
    assert safe_row(["Ada", 12, None, "a=b"]) == ["Ada", "12", "", "a=b"]
