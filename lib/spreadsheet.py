"""CSV that is safe to open in a spreadsheet."""

# A cell starting with one of these is run as a formula by Excel, LibreOffice and Sheets
# (e.g. =HYPERLINK(...) in a contact's note); a leading apostrophe makes it plain text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> str:
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def safe_row(values: list[object] | tuple[object, ...]) -> list[str]:
    return [safe_cell(value) for value in values]
