"""SOQL, as the "SOQL and SOSL Reference" documents it, for the objects the stand-in holds.

What it reads: ``SELECT field, ... FROM object [WHERE condition] [ORDER BY field [ASC|DESC]
[NULLS FIRST|LAST], ...] [LIMIT n] [OFFSET n]``, keywords in any case. A condition compares a
field with a literal (``=``, ``!=``, ``<>``, ``<``, ``<=``, ``>``, ``>=``), tests it against a
list (``IN``, ``NOT IN``) or a pattern (``LIKE``), and combines such tests with ``AND``,
``OR``, ``NOT`` and parentheses; as the reference's "Condition Expression Syntax (WHERE
Clause)" says, ``AND`` and ``OR`` cannot be mixed without parentheses.

Literals ("Date Formats and Date Literals in WHERE"): strings in single quotes with backslash
escapes ("Quoted String Escape Sequences"); numbers; ``true``, ``false``, ``null``; a date
``YYYY-MM-DD``; a dateTime in exactly one of the documented forms, ``YYYY-MM-DDThh:mm:ssZ``,
``YYYY-MM-DDThh:mm:ss+hh:mm`` or ``YYYY-MM-DDThh:mm:ss-hh:mm`` (whole seconds; anything else,
fractional seconds or an offset without its colon, is a MALFORMED_QUERY); and the relative
date literals ``YESTERDAY``, ``TODAY``, ``TOMORROW``, ``LAST_WEEK``, ``THIS_WEEK``,
``NEXT_WEEK``, ``LAST_MONTH``, ``THIS_MONTH``, ``NEXT_MONTH``, ``LAST_90_DAYS``,
``NEXT_90_DAYS``, ``THIS_YEAR``, ``LAST_YEAR``, ``NEXT_YEAR`` and ``LAST_N_DAYS:n``,
``NEXT_N_DAYS:n``, ``N_DAYS_AGO:n``, ``LAST_N_WEEKS:n``, ``NEXT_N_WEEKS:n``,
``N_WEEKS_AGO:n``, ``LAST_N_MONTHS:n``, ``NEXT_N_MONTHS:n``, ``N_MONTHS_AGO:n``,
``LAST_N_YEARS:n``, ``NEXT_N_YEARS:n``, ``N_YEARS_AGO:n``, each a range of whole days in the
org's time zone (the stand-in's org is on GMT; weeks start on Sunday, as in the en_US
locale). A dateTime value filters dateTime fields only, a date value date fields only.

How it says no, in the REST API's error shape (``[{"message", "errorCode"}]``, HTTP 400):
MALFORMED_QUERY for what does not parse (with the reference's ``ERROR at Row:r:Column:c``
pointer), INVALID_FIELD for a field the object lacks, INVALID_TYPE for an object the org
lacks, INVALID_QUERY_FILTER_OPERATOR for a literal of the wrong type for its field.

Deliberate simplifications: no relationship queries on sObjects (the Tooling API's
``EntityDefinition.QualifiedApiName`` is the one path), no aggregates, GROUP BY, subqueries,
TYPEOF, FIELDS() or semi-joins; text comparisons ignore case, as SOQL's do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from standins.salesforce.errors import Refusal
from standins.salesforce.schema import ObjectSchema
from standins.salesforce.store import normalize_id

_SPACE = re.compile(r"\s+")
_DATE_RUN = re.compile(r"\d{4}-\d{2}-\d{2}(?:T[0-9:.+\-Z]*)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:Z|[+-]\d{2}:\d{2})")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORD = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?::-?\d+)?")
_OPERATORS = ("!=", "<>", "<=", ">=", "=", "<", ">")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "'": "'", '"': '"',
            "\\": "\\", "%": "\\%", "_": "\\_"}  # fmt: skip
_KEYWORDS = frozenset(
    {"select", "from", "where", "and", "or", "not", "in", "like", "order", "by", "asc", "desc",
     "nulls", "first", "last", "limit", "offset", "true", "false", "null", "group", "having",
     "with", "typeof", "includes", "excludes"}
)  # fmt: skip
_TEXT_TYPES = frozenset({"string", "email", "phone", "textarea", "picklist", "combobox", "url"})
MAX_OFFSET = 2000


# --- errors ---------------------------------------------------------------------------------


def malformed(soql: str, position: int, detail: str) -> Refusal:
    """MALFORMED_QUERY with the pointer the reference's error messages carry."""
    row = soql.count("\n", 0, position) + 1
    start = soql.rfind("\n", 0, position) + 1
    end = soql.find("\n", position)
    line = soql[start : end if end >= 0 else len(soql)]
    column = position - start
    message = f"\n{line}\n{' ' * column}^\nERROR at Row:{row}:Column:{column + 1}\n{detail}"
    return Refusal(400, "MALFORMED_QUERY", message)


def invalid_field(name: str, object_name: str) -> Refusal:
    return Refusal(400, "INVALID_FIELD", f"No such column '{name}' on entity '{object_name}'")


def invalid_type(object_name: str) -> Refusal:
    return Refusal(
        400,
        "INVALID_TYPE",
        f"sObject type '{object_name}' is not supported. If you are attempting to use a "
        "custom object, be sure to append the '__c' after the entity name. Please reference "
        "your WSDL or the describe call for the appropriate names.",
    )


def _wrong_type(name: str, kind: str) -> Refusal:
    quoted = "should be enclosed in quotes" if kind == "string" else "should not be enclosed "
    quoted += "" if kind == "string" else "in quotes"
    return Refusal(
        400,
        "INVALID_QUERY_FILTER_OPERATOR",
        f"value of filter criterion for field '{name}' must be of type {kind} and {quoted}",
    )


# --- tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # word, string, number, date, datetime, op, punct, end
    text: str
    position: int
    value: Any = None

    def keyword(self, *words: str) -> bool:
        return self.kind == "word" and self.text.lower() in words


def tokenize(soql: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(soql)
    while i < n:
        char = soql[i]
        if char.isspace():
            i = _SPACE.match(soql, i).end()  # type: ignore[union-attr]
            continue
        if char == "'":
            i = _string(soql, i, tokens)
            continue
        run = _DATE_RUN.match(soql, i)
        if run is not None:
            tokens.append(_temporal(soql, i, run.group()))
            i = run.end()
            continue
        number = _NUMBER.match(soql, i)
        if number is not None and (char != "-" or _number_may_start(tokens)):
            tokens.append(Token("number", number.group(), i, float(number.group())))
            i = number.end()
            continue
        word = _WORD.match(soql, i)
        if word is not None:
            tokens.append(Token("word", word.group(), i))
            i = word.end()
            continue
        operator = next((op for op in _OPERATORS if soql.startswith(op, i)), None)
        if operator is not None:
            tokens.append(Token("op", "!=" if operator == "<>" else operator, i))
            i += len(operator)
            continue
        if char in "(),":
            tokens.append(Token("punct", char, i))
            i += 1
            continue
        raise malformed(soql, i, f"line {soql.count(chr(10), 0, i) + 1}:{i} no viable "
                        f"alternative at character '{char}'")  # fmt: skip
    tokens.append(Token("end", "", n))
    return tokens


def _number_may_start(tokens: list[Token]) -> bool:
    return not tokens or tokens[-1].kind in ("op", "punct", "word")


def _string(soql: str, start: int, tokens: list[Token]) -> int:
    chars: list[str] = []
    i = start + 1
    while i < len(soql):
        char = soql[i]
        if char == "\\":
            escaped = _ESCAPES.get(soql[i + 1 : i + 2])
            if escaped is None:
                raise malformed(soql, i, "Invalid string literal: an unknown escape sequence")
            chars.append(escaped)
            i += 2
            continue
        if char == "'":
            tokens.append(Token("string", soql[start : i + 1], start, "".join(chars)))
            return i + 1
        chars.append(char)
        i += 1
    raise malformed(soql, start, "unterminated string literal: it has no closing quote")


def _temporal(soql: str, position: int, text: str) -> Token:
    """A date or dateTime literal, in one of the documented formats only."""
    try:
        if _DATE.fullmatch(text):
            return Token("date", text, position, date.fromisoformat(text))
        if _DATETIME.fullmatch(text):
            value = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
            return Token("datetime", text, position, value)
    except ValueError:
        pass
    raise malformed(
        soql,
        position,
        f"value of filter criterion '{text}' is not a valid date or dateTime: the formats "
        "are YYYY-MM-DD, YYYY-MM-DDThh:mm:ssZ, YYYY-MM-DDThh:mm:ss+hh:mm and "
        "YYYY-MM-DDThh:mm:ss-hh:mm (whole seconds)",
    )


# --- date literals --------------------------------------------------------------------------


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _month_start(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _week_start(day: date) -> date:
    return day - timedelta(days=(day.weekday() + 1) % 7)  # weeks start on Sunday


def date_range(literal: str, today: date | None = None) -> tuple[datetime, datetime] | None:
    """The [start, end) a date literal stands for, or None if it is not one."""
    today = today or datetime.now(UTC).date()
    name, _, raw = literal.upper().partition(":")
    fixed: dict[str, tuple[date, date]] = {
        "YESTERDAY": (today - timedelta(days=1), today),
        "TODAY": (today, today + timedelta(days=1)),
        "TOMORROW": (today + timedelta(days=1), today + timedelta(days=2)),
        "LAST_WEEK": (_week_start(today) - timedelta(days=7), _week_start(today)),
        "THIS_WEEK": (_week_start(today), _week_start(today) + timedelta(days=7)),
        "NEXT_WEEK": (_week_start(today) + timedelta(days=7),
                      _week_start(today) + timedelta(days=14)),
        "LAST_MONTH": (_month_start(today, -1), _month_start(today, 0)),
        "THIS_MONTH": (_month_start(today, 0), _month_start(today, 1)),
        "NEXT_MONTH": (_month_start(today, 1), _month_start(today, 2)),
        "LAST_90_DAYS": (today - timedelta(days=90), today + timedelta(days=1)),
        "NEXT_90_DAYS": (today + timedelta(days=1), today + timedelta(days=91)),
        "THIS_YEAR": (date(today.year, 1, 1), date(today.year + 1, 1, 1)),
        "LAST_YEAR": (date(today.year - 1, 1, 1), date(today.year, 1, 1)),
        "NEXT_YEAR": (date(today.year + 1, 1, 1), date(today.year + 2, 1, 1)),
    }  # fmt: skip
    if not raw:
        span = fixed.get(name)
        return (_midnight(span[0]), _midnight(span[1])) if span else None
    if not raw.isdigit():
        return None
    n = int(raw)
    tomorrow = today + timedelta(days=1)
    week, month = _week_start(today), _month_start(today, 0)
    spans: dict[str, tuple[date, date]] = {
        "LAST_N_DAYS": (today - timedelta(days=n), tomorrow),
        "NEXT_N_DAYS": (tomorrow, tomorrow + timedelta(days=n)),
        "N_DAYS_AGO": (today - timedelta(days=n), today - timedelta(days=n - 1)),
        "LAST_N_WEEKS": (week - timedelta(weeks=n), week),
        "NEXT_N_WEEKS": (week + timedelta(weeks=1), week + timedelta(weeks=n + 1)),
        "N_WEEKS_AGO": (week - timedelta(weeks=n), week - timedelta(weeks=n - 1)),
        "LAST_N_MONTHS": (_month_start(today, -n), month),
        "NEXT_N_MONTHS": (_month_start(today, 1), _month_start(today, n + 1)),
        "N_MONTHS_AGO": (_month_start(today, -n), _month_start(today, 1 - n)),
        "LAST_N_YEARS": (date(today.year - n, 1, 1), date(today.year, 1, 1)),
        "NEXT_N_YEARS": (date(today.year + 1, 1, 1), date(today.year + n + 1, 1, 1)),
        "N_YEARS_AGO": (date(today.year - n, 1, 1), date(today.year - n + 1, 1, 1)),
    }
    span = spans.get(name)
    return (_midnight(span[0]), _midnight(span[1])) if span else None


# --- the parsed query -----------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    kind: str  # string, number, boolean, null, date, datetime, range
    value: Any
    position: int


@dataclass(frozen=True)
class Path:
    """A field as the query wrote it, and its spelling and type in the org."""

    written: str
    name: str  # the org's spelling; "Relationship.Field" for a path
    type: str | None  # None: an undeclared field of an open object
    position: int


Test = Callable[[Mapping[str, Any]], bool]
R = TypeVar("R", bound=Mapping[str, Any])


@dataclass
class Query:
    soql: str
    object: ObjectSchema
    fields: list[Path]
    where: Test | None = None
    conjuncts: list[tuple[Path, str, Literal]] = field(default_factory=list)
    order: list[tuple[Path, bool, bool]] = field(default_factory=list)  # desc, nulls last
    limit: int | None = None
    offset: int | None = None
    id_list: list[str] | None = None  # a top-level "Id IN (...)" term's Ids

    @property
    def names(self) -> list[str]:
        """The fields as the query wrote them (a Bulk API result's header)."""
        return [path.written for path in self.fields]

    def value(self, record: Mapping[str, Any], path: Path) -> Any:
        return field_value(self.object, record, path.name)

    def select(self, records: Iterable[R]) -> list[R]:
        """Filter, order and page records already narrowed to this object."""
        test = self.where
        found = list(records) if test is None else [r for r in records if test(r)]
        return self.arrange(found)

    def arrange(self, found: list[R]) -> list[R]:
        for path, descending, nulls_last in reversed(self.order):
            found.sort(key=self._sort_key(path, descending, nulls_last), reverse=descending)
        start = self.offset or 0
        end = None if self.limit is None else start + self.limit
        return found[start:end] if start or end is not None else found

    def _sort_key(
        self, path: Path, descending: bool, nulls_last: bool
    ) -> Callable[[Mapping[str, Any]], Any]:
        # Nulls first by default ascending, last by default descending (reference, ORDER BY).
        flag_null_high = nulls_last != descending

        def key(record: Mapping[str, Any]) -> tuple[bool, Any]:
            value = _comparable(self.value(record, path), path.type)
            is_null = value is None
            return (is_null if flag_null_high else not is_null, _orderable(value))

        return key


def _orderable(value: Any) -> Any:
    if isinstance(value, bool | int | float | datetime | date | str) or value is None:
        return value
    return str(value)


def field_value(schema: ObjectSchema, record: Mapping[str, Any], name: str) -> Any:
    """A field's value as the API shows it: stored, or worked out (Name), and a checkbox
    that was never set is false, never null."""
    if "." in name:
        relationship, _, rest = name.partition(".")
        related = record.get(relationship)
        return related.get(rest) if isinstance(related, Mapping) else None
    value = record.get(name)
    if value is None:
        if name == "Name" and (
            schema.name in ("Contact", "Lead")
            or (schema.name == "Account" and record.get("IsPersonAccount"))
        ):
            parts = [record.get("FirstName"), record.get("LastName")]
            return " ".join(str(p) for p in parts if p) or None
        declared = schema.field(name)
        if declared is not None and declared.type == "boolean":
            return False
    return value


# --- parsing --------------------------------------------------------------------------------


ResolveObject = Callable[[str], ObjectSchema | None]
SpellField = Callable[[ObjectSchema, str], str]


class _Parser:
    def __init__(self, soql: str, resolve: ResolveObject, spell: SpellField) -> None:
        self.soql = soql
        self.tokens = tokenize(soql)
        self.i = 0
        self.resolve = resolve
        self.spell = spell

    # -- tokens --

    @property
    def token(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def unexpected(self, token: Token | None = None) -> Refusal:
        token = token or self.token
        if token.kind == "end":
            return malformed(self.soql, token.position, "unexpected end of query")
        return malformed(self.soql, token.position, f"unexpected token: '{token.text}'")

    def expect_keyword(self, *words: str) -> Token:
        if not self.token.keyword(*words):
            raise self.unexpected()
        return self.advance()

    # -- the query --

    def parse(self) -> Query:
        self.expect_keyword("select")
        written = self.select_list()
        self.expect_keyword("from")
        object_token = self.advance()
        if object_token.kind != "word" or object_token.keyword(*_KEYWORDS):
            raise self.unexpected(object_token)
        schema = self.resolve(object_token.text)
        if schema is None:
            raise invalid_type(object_token.text)
        query = Query(self.soql, schema, [self.path(schema, t) for t in written])
        lowered = [path.name.lower() for path in query.fields]
        for index, name in enumerate(lowered):
            if name in lowered[:index]:
                raise malformed(
                    self.soql,
                    query.fields[index].position,
                    f"duplicate field selected: {query.fields[index].written}",
                )
        if self.token.keyword("where"):
            self.advance()
            query.where, query.conjuncts = self.condition(schema)
            for path, operator, literal in query.conjuncts:
                if path.name == "Id" and operator == "in":
                    query.id_list = list(literal.value)
        if self.token.keyword("order"):
            self.advance()
            self.expect_keyword("by")
            query.order = self.order_by(schema)
        if self.token.keyword("limit"):
            self.advance()
            query.limit = self.integer()
        if self.token.keyword("offset"):
            self.advance()
            query.offset = self.integer()
            if query.offset > MAX_OFFSET:
                raise Refusal(
                    400, "NUMBER_OUTSIDE_VALID_RANGE",
                    f"Maximum SOQL offset allowed is {MAX_OFFSET}",
                )  # fmt: skip
        if self.token.kind != "end":
            raise self.unexpected()
        return query

    def select_list(self) -> list[Token]:
        written = [self.field_token()]
        while self.token.text == "," and self.token.kind == "punct":
            self.advance()
            written.append(self.field_token())
        return written

    def field_token(self) -> Token:
        token = self.advance()
        if token.kind != "word" or token.keyword(*_KEYWORDS):
            raise self.unexpected(token)
        if self.token.text == "(" and self.token.kind == "punct":
            raise malformed(
                self.soql, token.position,
                f"the stand-in does not answer {token.text}(): aggregates, FIELDS() and "
                "other functions are not supported",
            )  # fmt: skip
        return token

    def path(self, schema: ObjectSchema, token: Token) -> Path:
        text = token.text
        if ":" in text:
            raise self.unexpected(token)
        if "." in text:
            relationship, _, rest = text.partition(".")
            related = schema.relationships.get(relationship.lower())
            if related is None:
                raise malformed(
                    self.soql, token.position,
                    f"the stand-in does not follow relationships: {text}",
                )  # fmt: skip
            declared = related.field(rest)
            if declared is None or "." in rest:
                raise invalid_field(text, schema.name)
            return Path(text, f"{related.name}.{declared.name}", declared.type, token.position)
        if not schema.has(text):
            raise invalid_field(text, schema.name)
        declared = schema.field(text)
        if declared is not None:
            return Path(text, declared.name, declared.type, token.position)
        return Path(text, self.spell(schema, text), None, token.position)

    def integer(self) -> int:
        token = self.advance()
        if token.kind != "number" or not token.text.isdigit():
            raise self.unexpected(token)
        return int(token.text)

    def order_by(self, schema: ObjectSchema) -> list[tuple[Path, bool, bool]]:
        order = []
        while True:
            path = self.path(schema, self.field_token())
            descending = False
            if self.token.keyword("asc", "desc"):
                descending = self.advance().text.lower() == "desc"
            nulls_last = descending
            if self.token.keyword("nulls"):
                self.advance()
                nulls_last = self.expect_keyword("first", "last").text.lower() == "last"
            order.append((path, descending, nulls_last))
            if not (self.token.kind == "punct" and self.token.text == ","):
                return order
            self.advance()

    # -- conditions --

    def condition(self, schema: ObjectSchema) -> tuple[Test, list[tuple[Path, str, Literal]]]:
        """The WHERE clause, and its top-level AND terms that compare a field (the store
        narrows on those before testing every record)."""
        first, simple = self.term(schema)
        if not self.token.keyword("and", "or"):
            return first, [simple] if simple else []
        joiner = self.token.text.lower()
        terms, conjuncts = [first], [simple] if simple else []
        while self.token.keyword("and", "or"):
            if self.token.text.lower() != joiner:  # the reference: parenthesize mixed AND/OR
                raise self.unexpected()
            self.advance()
            test, simple = self.term(schema)
            terms.append(test)
            if simple:
                conjuncts.append(simple)
        if joiner == "and":
            return (lambda r: all(t(r) for t in terms)), conjuncts
        return (lambda r: any(t(r) for t in terms)), []

    def term(self, schema: ObjectSchema) -> tuple[Test, tuple[Path, str, Literal] | None]:
        if self.token.keyword("not"):
            self.advance()
            inner, _ = self.term(schema)
            return (lambda r: not inner(r)), None
        if self.token.kind == "punct" and self.token.text == "(":
            self.advance()
            test, _ = self.condition(schema)
            if not (self.token.kind == "punct" and self.token.text == ")"):
                raise self.unexpected()
            self.advance()
            return test, None
        path = self.path(schema, self.field_token())
        if self.token.keyword("not", "in"):
            negated = self.token.keyword("not")
            if negated:
                self.advance()
                if not self.token.keyword("in"):
                    raise self.unexpected()
            self.advance()
            values = self.value_list(path)
            ranged = next((v for v in values if v.kind in ("range", "null")), None)
            if ranged is not None:
                raise malformed(self.soql, ranged.position, "IN takes a list of values only")
            simple = None
            if not negated:
                listed = Literal("list", [v.value for v in values], values[0].position)
                simple = (path, "in", listed)
            return _in_test(schema, path, values, negated), simple
        if self.token.keyword("like"):
            self.advance()
            literal = self.literal(path)
            if literal.kind != "string" or (path.type is not None and path.type not in _TEXT_TYPES):
                raise _wrong_type(path.written, "string")
            return _like_test(schema, path, literal.value), None
        if self.token.kind != "op":
            raise self.unexpected()
        operator = self.advance().text
        literal = self.literal(path)
        return _compare_test(schema, path, operator, literal), (path, operator, literal)

    def value_list(self, path: Path) -> list[Literal]:
        if not (self.token.kind == "punct" and self.token.text == "("):
            raise self.unexpected()
        self.advance()
        values = [self.literal(path)]
        while self.token.kind == "punct" and self.token.text == ",":
            self.advance()
            values.append(self.literal(path))
        if not (self.token.kind == "punct" and self.token.text == ")"):
            raise self.unexpected()
        self.advance()
        return values

    def literal(self, path: Path) -> Literal:
        token = self.advance()
        kind = token.kind
        if kind in ("string", "number", "date", "datetime"):
            literal = Literal(kind, token.value, token.position)
        elif token.keyword("true", "false"):
            literal = Literal("boolean", token.text.lower() == "true", token.position)
        elif token.keyword("null"):
            literal = Literal("null", None, token.position)
        elif kind == "word" and (span := date_range(token.text)) is not None:
            literal = Literal("range", span, token.position)
        elif kind == "word" and not token.keyword(*_KEYWORDS):
            raise malformed(
                self.soql, token.position,
                f"unexpected token: '{token.text}': not a literal, nor a date literal the "
                "stand-in knows",
            )  # fmt: skip
        else:
            raise self.unexpected(token)
        return _checked(path, literal)


def _checked(path: Path, literal: Literal) -> Literal:
    """The literal, if it fits the field's type (the reference's "Date Formats" and
    "Comparison Operators"); INVALID_QUERY_FILTER_OPERATOR otherwise."""
    kind, field_type = literal.kind, path.type
    if kind == "null" or field_type is None:
        return literal
    if field_type == "datetime":
        if kind not in ("datetime", "range"):
            raise _wrong_type(path.written, "dateTime")
    elif field_type == "date":
        if kind not in ("date", "range"):
            raise _wrong_type(path.written, "date")
    elif field_type == "boolean":
        if kind != "boolean":
            raise _wrong_type(path.written, "boolean")
    elif field_type in ("double", "int", "currency", "percent"):
        if kind != "number":
            raise _wrong_type(path.written, "number")
    elif field_type in ("id", "reference"):
        if kind != "string":
            raise _wrong_type(path.written, "string")
        key = normalize_id(literal.value)
        if key is None:
            message = f"invalid ID field: {literal.value}"
            raise Refusal(400, "INVALID_QUERY_FILTER_OPERATOR", message)
        return Literal("id", key, literal.position)
    elif kind != "string":
        raise _wrong_type(path.written, "string")
    return literal


def _comparable(value: Any, field_type: str | None) -> Any:
    """A stored value as comparisons see it: text without case, Ids in their 18-character
    form, dates as datetimes at midnight."""
    if value is None:
        return None
    if field_type in ("id", "reference"):
        return normalize_id(value) or value
    if isinstance(value, str):
        if field_type == "datetime":
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
            except ValueError:
                return value
        if field_type == "date":
            try:
                return _midnight(date.fromisoformat(value[:10]))
            except ValueError:
                return value
        return value.lower()
    if isinstance(value, date) and not isinstance(value, datetime):
        return _midnight(value)
    return value


def _literal_value(literal: Literal) -> Any:
    if literal.kind == "string":
        return literal.value.lower()
    if literal.kind == "date":
        return _midnight(literal.value)
    return literal.value


def _compare_test(schema: ObjectSchema, path: Path, operator: str, literal: Literal) -> Test:
    name, field_type = path.name, path.type
    if literal.kind == "null":
        if operator not in ("=", "!="):
            return lambda record: False
        wanted_null = operator == "="
        return lambda record: (field_value(schema, record, name) is None) == wanted_null
    if literal.kind == "range":
        start, end = literal.value
        within: dict[str, Callable[[Any], bool]] = {
            "=": lambda v: start <= v < end,
            "!=": lambda v: not start <= v < end,
            "<": lambda v: v < start,
            "<=": lambda v: v < end,
            ">": lambda v: v >= end,
            ">=": lambda v: v >= start,
        }
        check = within[operator]

        def in_range(record: Mapping[str, Any]) -> bool:
            value = _comparable(field_value(schema, record, name), field_type or "datetime")
            if value is None:
                return operator == "!="
            try:
                return bool(check(value))
            except TypeError:
                return False

        return in_range
    wanted = _literal_value(literal)
    compare = _COMPARISONS[operator]

    def test(record: Mapping[str, Any]) -> bool:
        value = _comparable(field_value(schema, record, name), field_type)
        if value is None:
            return operator == "!="
        try:
            return bool(compare(value, wanted))
        except TypeError:
            return False

    return test


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _in_test(schema: ObjectSchema, path: Path, values: list[Literal], negated: bool) -> Test:
    wanted = {_literal_value(literal) for literal in values}
    name, field_type = path.name, path.type

    def test(record: Mapping[str, Any]) -> bool:
        value = _comparable(field_value(schema, record, name), field_type)
        return (value in wanted) != negated

    return test


def _like_test(schema: ObjectSchema, path: Path, pattern: str) -> Test:
    parts = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            parts.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        parts.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
        i += 1
    regex = re.compile("".join(parts), re.IGNORECASE | re.DOTALL)
    name = path.name

    def test(record: Mapping[str, Any]) -> bool:
        value = field_value(schema, record, name)
        return isinstance(value, str) and regex.fullmatch(value) is not None

    return test


def parse(soql: str, resolve: ResolveObject, spell: SpellField | None = None) -> Query:
    """Parse a query against the objects ``resolve`` names; raise the Refusal Salesforce
    answers for one it cannot run. ``spell`` gives the org's spelling of an undeclared field
    of an open object (default: as written)."""
    if not soql.strip():
        raise malformed(soql, 0, "unexpected end of query: a query starts with SELECT")
    return _Parser(soql, resolve, spell or (lambda schema, name: name)).parse()
