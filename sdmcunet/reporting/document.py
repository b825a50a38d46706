"""The report as plain data (sections of paragraphs, lists, tables and figures), rendered elsewhere.

Paragraph and cell text is plain text in which `backticks` mark code; each renderer escapes it
for its format.
"""

from dataclasses import dataclass, field


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    published_columns: frozenset[int] = frozenset()  # columns quoting published, not measured, numbers


@dataclass
class Figure:
    name: str  # the PNG's file name beside report.md, without suffix
    png: bytes
    caption: str


@dataclass
class BulletList:
    items: list[str]


Block = str | BulletList | Table | Figure


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Report:
    title: str
    sections: list[Section]

    @property
    def figures(self) -> list[Figure]:
        return [block for section in self.sections for block in section.blocks if isinstance(block, Figure)]
