"""Where each key and array element of a TOML text was written: the lines sweep errors cite.

``tomllib`` gives values without positions, so this scans the text once more (after ``tomllib``
has accepted it) and maps every *key path* to its line: ``("settings", "steps")`` for ``steps``
under ``[settings]``, ``("optimizers", 1, "lr", 2)`` for the third value of ``lr`` in the second
``[[optimizers]]`` table, ``("problems", 0)`` for the first element of ``problems = [...]``.

>>> text = 'seeds = 2\\n[settings]\\nsteps = 10\\n[[optimizers]]\\nlr = [0.1,\\n  0.2]\\n'
>>> lines = key_lines(text)
>>> lines[("settings", "steps")], lines[("optimizers", 0, "lr", 1)]
(3, 6)
>>> line_of(lines, ("optimizers", 0, "b1"))  # not written: the nearest enclosing table
4
"""

from __future__ import annotations

__all__ = ["key_lines", "line_of"]

KeyPath = tuple  # table names, keys and array indices


def key_lines(text: str) -> dict[KeyPath, int]:
    """``{key path: 1-based line}`` for every table header, key and array element of ``text``.

    ``text`` must be valid TOML (parse it with ``tomllib`` first); the scan does not check it.
    """
    scan = _Scanner(text)
    scan.document()
    return scan.lines


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path``, or of its longest written prefix (None when nothing of it is)."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


_BARE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _Scanner:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[KeyPath, int] = {}
        self.arrays_of_tables: dict[KeyPath, int] = {}

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def advance(self, n: int = 1) -> None:
        self.line += self.text.count("\n", self.pos, self.pos + n)
        self.pos += n

    def record(self, path: KeyPath) -> None:
        self.lines.setdefault(path, self.line)

    def blank(self, newlines: bool) -> None:
        """Skip spaces and comments (and newlines when ``newlines``)."""
        while self.pos < len(self.text):
            ch = self.peek()
            if ch in " \t\r" or (newlines and ch == "\n"):
                self.advance()
            elif ch == "#":
                end = self.text.find("\n", self.pos)
                self.advance((len(self.text) if end < 0 else end) - self.pos)
            else:
                return

    def document(self) -> None:
        table: KeyPath = ()
        while True:
            self.blank(newlines=True)
            if self.pos >= len(self.text):
                return
            if self.peek(2) == "[[":
                self.advance(2)
                name = self.key()
                index = self.arrays_of_tables.get(name, 0)
                self.arrays_of_tables[name] = index + 1
                table = (*name, index)
                self.record(table)
                self.blank(newlines=False)
                self.advance(2)  # ]]
            elif self.peek() == "[":
                self.advance()
                table = self.key()
                self.record(table)
                self.blank(newlines=False)
                self.advance()  # ]
            else:
                self.pair(table)

    def pair(self, table: KeyPath) -> None:
        path = (*table, *self.key())
        self.record(path)
        self.blank(newlines=False)
        self.advance()  # =
        self.value(path)

    def key(self) -> KeyPath:
        """A bare, quoted or dotted key."""
        parts = []
        while True:
            self.blank(newlines=False)
            ch = self.peek()
            if ch in "\"'":
                start = self.pos
                self.string()
                parts.append(self.text[start + 1 : self.pos - 1])
            else:
                start = self.pos
                while self.pos < len(self.text) and self.peek() in _BARE:
                    self.advance()
                parts.append(self.text[start : self.pos])
            self.blank(newlines=False)
            if self.peek() != ".":
                return tuple(parts)
            self.advance()

    def value(self, path: KeyPath) -> None:
        self.blank(newlines=False)
        ch = self.peek()
        if ch == "[":
            self.advance()
            index = 0
            while True:
                self.blank(newlines=True)
                if self.peek() == "]":
                    self.advance()
                    return
                self.record((*path, index))
                self.value((*path, index))
                self.blank(newlines=True)
                if self.peek() == ",":
                    self.advance()
                    index += 1
        elif ch == "{":
            self.advance()
            while True:
                self.blank(newlines=False)
                if self.peek() == "}":
                    self.advance()
                    return
                self.pair(path)
                self.blank(newlines=False)
                if self.peek() == ",":
                    self.advance()
        elif ch in "\"'":
            self.string()
        else:  # a number, boolean or date: up to the next delimiter
            while self.pos < len(self.text) and self.peek() not in ",]}\n#":
                self.advance()

    def string(self) -> None:
        quote = self.peek()
        if self.peek(3) == quote * 3:
            end = self.text.find(quote * 3, self.pos + 3)
            end += 3
            while self.text[end : end + 1] == quote:  # """a"""" ends at its last quote
                end += 1
            self.advance(end - self.pos)
            return
        self.advance()
        while self.pos < len(self.text):
            ch = self.peek()
            if ch == "\\" and quote == '"':
                self.advance(2)
            elif ch == quote:
                self.advance()
                return
            else:
                self.advance()
