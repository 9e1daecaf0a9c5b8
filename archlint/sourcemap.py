"""Map graph nodes back to the source line a user would change.

Static matching of module paths to source text breaks on loops, helper methods and
list comprehensions, so positions are captured at run time instead:

* ``record_constructions()`` wraps ``nn.Module.__init__`` while the model is built and
  records, for every module, the user-code call that constructed it.
* ``user_call_site()`` is called by the tracer when it creates a node for a functional op;
  the innermost user frame is then the op's line in ``forward``.

Both give a ``RawPosition`` straight from the interpreter (``code.co_positions()``, whose
columns are UTF-8 *byte* offsets). ``SourceIndex`` parses the file once with ``ast`` and turns
a raw position into a clean ``Span`` (1-based lines, 0-based *character* columns, exclusive
end): the whole ``self.x = nn.Y(...)`` statement for a module assigned to an attribute, the
constructor call otherwise, the call or operator expression for functional ops.
"""

from __future__ import annotations

import ast
import bisect
import functools
import io
import itertools
import os
import re
import sys
import tokenize
import weakref
from contextlib import contextmanager
from typing import Iterable, Iterator, NamedTuple

import torch
from torch import nn

from archlint.files import dir_prefix, environment_roots
from archlint.graph import Span

CONSTRUCTION = "construction"
CALL = "call"


class RawPosition(NamedTuple):
    """Where the interpreter was: the instruction being executed in the first user frame.

    ``col`` and ``end_col`` are UTF-8 byte offsets, as ``co_positions()`` reports them;
    ``SourceIndex`` converts them to character columns.
    """

    path: str
    line: int
    col: int
    end_line: int | None
    end_col: int | None
    # CONSTRUCTION (a module's constructor call) or CALL (a functional op in forward):
    # decides which SourceIndex method ``to_span`` uses.
    kind: str = CALL


# --------------------------------------------------------------------------------------
# Which frames are the user's


# Directories whose code is never "the line a user would change": installed code, and torch
# and archlint themselves wherever they were installed from (an editable install lives in
# a source tree).
_LIBRARY_ROOTS = environment_roots() + (
    dir_prefix(os.path.dirname(torch.__file__)),
    dir_prefix(os.path.dirname(os.path.abspath(__file__))),
)

# Frame filenames repeat endlessly during a build or a trace; resolve each once.
_realpath = functools.lru_cache(maxsize=4096)(os.path.realpath)


@functools.lru_cache(maxsize=4096)
def _is_library(filename: str) -> bool:
    # Pseudo-files (<string>, <frozen ...>, fx's <eval_with_key>) have no line to point at.
    if filename.startswith("<"):
        return True
    return _realpath(filename).startswith(_LIBRARY_ROOTS)


def _normalise_skip(extra_skip: Iterable[str]) -> tuple[str, ...]:
    return tuple(os.path.realpath(p) for p in extra_skip)


def _skipped(filename: str, extra_skip: tuple[str, ...]) -> bool:
    """Whether ``filename`` is one of ``extra_skip`` or lies in a directory among them."""
    real = _realpath(filename)
    return any(real == p or real.startswith(os.path.join(p, "")) for p in extra_skip)


def _first_user_frame(frame, obj: object = None, extra_skip: tuple[str, ...] = ()):
    """Walk outward from ``frame`` to the first frame in user code.

    Frames of ``obj``'s own ``__init__`` chain (``self is obj``) are skipped too, so that a
    user class ``Block`` is located at the ``Block()`` call that built it, not at the
    ``super().__init__()`` inside it.
    """
    while frame is not None:
        filename = frame.f_code.co_filename
        library = _is_library(filename) or (bool(extra_skip) and _skipped(filename, extra_skip))
        # f_locals is read only for user frames: it copies the frame's locals.
        if not library and (obj is None or frame.f_locals.get("self") is not obj):
            return frame
        frame = frame.f_back
    return None


def _position(frame, kind: str) -> RawPosition:
    """The source range of the instruction ``frame`` is executing (a CALL or BINARY_OP)."""
    code = frame.f_code
    line = end_line = col = end_col = None
    if hasattr(code, "co_positions") and frame.f_lasti >= 0:
        # One entry per 2-byte code unit; f_lasti is a byte offset.
        entry = next(itertools.islice(code.co_positions(), frame.f_lasti // 2, None), None)
        if entry is not None:
            line, end_line, col, end_col = entry
    if line is None:
        # Python 3.10, or an instruction without a location: the line is all we know.
        return RawPosition(code.co_filename, frame.f_lineno, 0, None, None, kind)
    return RawPosition(
        code.co_filename, line, col if col is not None else 0, end_line, end_col, kind
    )


def user_call_site(extra_skip: Iterable[str] = ()) -> RawPosition | None:
    """Position of the innermost user-code instruction on the current stack.

    Called by the tracer while it records a functional op, this is the op's expression in
    the user's ``forward``. ``extra_skip``: more files or directories to treat as library.
    None when the whole stack is library code.
    """
    frame = _first_user_frame(sys._getframe(1), None, _normalise_skip(extra_skip))
    return _position(frame, CALL) if frame is not None else None


# --------------------------------------------------------------------------------------
# Construction sites


class ConstructionSites:
    """Module -> RawPosition of the call that built it; holds no strong reference to modules.

    Keyed by ``id`` with a weak reference beside it rather than a WeakKeyDictionary: a user
    module may define ``__eq__``/``__hash__`` that do not work before ``__init__`` is done.
    """

    def __init__(self) -> None:
        self._sites: dict[int, tuple[weakref.ref, RawPosition]] = {}

    def get(self, module: object, default: RawPosition | None = None) -> RawPosition | None:
        entry = self._sites.get(id(module))
        # The identity check guards against a dead module's id being reused.
        if entry is not None and entry[0]() is module:
            return entry[1]
        return default

    def find(self, root: nn.Module, module_path: str) -> RawPosition | None:
        """Site of ``root``'s submodule at ``module_path``, else of its nearest recorded
        ancestor (modules made by ``copy.deepcopy``, as in ``nn.TransformerEncoder``, never
        run ``__init__`` and so have no site of their own)."""
        parts = module_path.split(".") if module_path else []
        for n in range(len(parts), -1, -1):
            try:
                module = root.get_submodule(".".join(parts[:n]))
            except AttributeError:
                continue
            pos = self.get(module)
            if pos is not None:
                return pos
        return None

    def __len__(self) -> int:
        return len(self._sites)

    def _add(self, module: object, pos: RawPosition) -> None:
        key = id(module)
        # The first record wins: a module whose __init__ runs nn.Module.__init__ twice (a
        # diamond) was still built by one call.
        if self.get(module) is not None:
            return
        ref = weakref.ref(module, lambda _ref, key=key: self._sites.pop(key, None))
        self._sites[key] = (ref, pos)


@contextmanager
def record_constructions(extra_skip: Iterable[str] = ()) -> Iterator[ConstructionSites]:
    """Record where every ``nn.Module`` created inside the block was constructed.

    ``nn.Module.__init__`` is wrapped for the duration and restored, as the very same
    object, on exit (also on an exception). Nesting is safe: an inner block wraps the outer
    block's wrapper, so both record, and each exit restores what its entry found. The patch
    is process-wide, so modules built by other threads meanwhile are recorded too.
    """
    sites = ConstructionSites()
    skip = _normalise_skip(extra_skip)
    # Read from the class dict so we put back exactly what was there.
    original = nn.Module.__dict__["__init__"]

    @functools.wraps(original)
    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        frame = _first_user_frame(sys._getframe(1), self, skip)
        if frame is not None:
            sites._add(self, _position(frame, CONSTRUCTION))

    nn.Module.__init__ = recording_init
    try:
        yield sites
    finally:
        nn.Module.__init__ = original


# --------------------------------------------------------------------------------------
# Source text -> Spans


class _Range(NamedTuple):
    """A source range: (line, column) of its start and its exclusive end; 1-based lines,
    0-based *character* columns."""

    start: tuple[int, int]
    end: tuple[int, int]


# Expressions a functional op in forward can be: F.relu(x), x + y, out += y, -x, x[0].
_OP_NODES = (ast.Call, ast.BinOp, ast.AugAssign, ast.UnaryOp, ast.Subscript)
_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# From the start of a class/def statement to its name: the keywords and the whitespace
# (line continuations included) between them.
_SPACE = r"(?:[ \t\f]|\\(?:\r\n|\r|\n))+"
_DEF_HEAD = re.compile(rf"(?:async{_SPACE})?(?:def|class){_SPACE}")
_IDENTIFIER = re.compile(r"\w+")


def _is_self_attribute(target: ast.expr) -> bool:
    return (
        isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == "self"
    )


class SourceIndex:
    """One source file, parsed once with the standard library's ``ast``, answering
    position -> Span questions.

    ``ast`` ranges are the syntactic ones a user would select (a parenthesised call's range
    excludes its parentheses, as the interpreter's own positions do), it parses any file the
    running Python can import, and it is in C: parsing costs about a millisecond where a
    concrete syntax tree costs tens (and its import a few hundred; measured in
    benchmarks/bench_e2e.py). ``tree`` is shared with model discovery (``archlint.load``),
    so each linted file is parsed once.

    A file that does not parse still answers, with the raw positions (converted to
    character columns): a finding at a slightly rough span beats no finding. ``tree`` is
    None then and ``syntax_error`` says why.
    """

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            source = f.read()
        # Decode as Python does (coding cookie, BOM), so columns match the interpreter's.
        encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
        text = source.decode(encoding)  # "utf-8-sig" when there is a BOM: it drops it
        self._text = text
        # Python counts lines at \n, \r\n and \r only (str.splitlines also splits at \f...).
        self._lines = re.split(r"\r\n|\r|\n", text)
        self.tree: ast.Module | None = None
        self.syntax_error: SyntaxError | None = None
        try:
            self.tree = ast.parse(text, filename=path)
        except SyntaxError as exc:
            self.syntax_error = exc
        except ValueError as exc:  # null bytes
            self.syntax_error = SyntaxError(str(exc))

        # Each call: (range, range of the `self.x = <call>` statement or None).
        calls: list[tuple[_Range, _Range | None]] = []
        self._ops: list[_Range] = []
        # Qualified name ("Outer.Inner", "Net.forward") -> range of the name.
        self._definitions: dict[str, _Range] = {}
        statement_of: dict[int, _Range] = {}
        # Depth first in source order, so that a later definition of a name wins, as at
        # run time, and an assignment is seen before the call that is its value.
        stack: list[tuple[ast.AST, tuple[str, ...]]] = [(self.tree, ())] if self.tree else []
        while stack:
            node, scope = stack.pop()
            if isinstance(node, _OP_NODES):
                rng = self.range_of(node)
                self._ops.append(rng)
                if isinstance(node, ast.Call):
                    calls.append((rng, statement_of.get(id(node))))
            elif isinstance(node, ast.Assign):
                if all(_is_self_attribute(t) for t in node.targets) and isinstance(node.value, ast.Call):
                    statement_of[id(node.value)] = self.range_of(node)
            elif isinstance(node, ast.AnnAssign):
                if _is_self_attribute(node.target) and isinstance(node.value, ast.Call):
                    statement_of[id(node.value)] = self.range_of(node)
            if isinstance(node, _DEFINITIONS):
                # Decorators, defaults and bases belong to the enclosing scope.
                outer = [*node.decorator_list, *getattr(node, "bases", ()), *getattr(node, "keywords", ())]
                if not isinstance(node, ast.ClassDef):
                    outer += [node.args, *([node.returns] if node.returns else [])]
                scope_in = (*scope, node.name)
                self._definitions[".".join(scope_in)] = self.name_range(node)
                children = [(c, scope) for c in outer] + [(c, scope_in) for c in node.body]
            else:
                children = [(c, scope) for c in ast.iter_child_nodes(node)]
            stack.extend(reversed(children))

        self._calls_by_start: dict[tuple[int, int], list[tuple[_Range, _Range | None]]] = {}
        self._calls_by_end: dict[tuple[int, int], tuple[_Range, _Range | None]] = {}
        for call in calls:
            self._calls_by_start.setdefault(call[0].start, []).append(call)
            # A closing parenthesis belongs to exactly one call, so ends are unique.
            self._calls_by_end[call[0].end] = call
        self._ops_exact = {(r.start, r.end): r for r in self._ops}

    def range_of(self, node: ast.AST) -> _Range:
        """``node``'s range (ast counts columns in UTF-8 bytes; this in characters)."""
        return _Range(
            (node.lineno, self._char_col(node.lineno, node.col_offset)),
            (node.end_lineno, self._char_col(node.end_lineno, node.end_col_offset)),
        )

    def name_range(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> _Range:
        """The range of the name in a ``class``/``def`` statement (ast has only the whole
        statement's)."""
        start = self.range_of(node).start
        offset = self._offset(start)
        head = _DEF_HEAD.match(self._text, offset)
        name = _IDENTIFIER.match(self._text, head.end()) if head else None
        if name is None:  # not reached for a parsed definition; keep the statement start
            return _Range(start, start)
        return _Range(self._position(name.start()), self._position(name.end()))

    def name_span(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> Span:
        return self._span(self.name_range(node))

    def line_text(self, line: int) -> str:
        """The text of 1-based ``line``, without its line break ('' when out of range)."""
        return self._lines[line - 1] if 1 <= line <= len(self._lines) else ""

    def span_for_construction(self, pos: RawPosition) -> Span:
        """The ``self.x = nn.Y(...)`` statement when the constructor call at ``pos`` is the
        whole value of an assignment to an attribute of ``self``; the call itself otherwise
        (a Sequential element, a loop's append argument); ``pos`` as given if no call is
        there."""
        start, end = self._char_range(pos)
        candidates = self._calls_by_start.get(start, [])
        call = next((c for c in candidates if c[0].end == end), None)
        if call is None and candidates:
            call = candidates[0]
        if call is None and end is not None:
            # Python 3.11+ starts a method call that spans lines at the attribute name
            # (`nn` newline `.Linear(...)` starts at `Linear`), so match its end instead.
            call = self._calls_by_end.get(end)
        if call is None:
            return self._raw_span(start, end)
        call_range, statement_range = call
        return self._span(statement_range or call_range)

    def span_for_call(self, pos: RawPosition) -> Span:
        """The smallest call / operator / augmented-assignment expression enclosing ``pos``
        (a functional op in forward), or ``pos`` as given if none does."""
        start, end = self._char_range(pos)
        end = end if end is not None else start
        exact = self._ops_exact.get((start, end))
        if exact is not None:
            return self._span(exact)
        enclosing = [r for r in self._ops if r.start <= start and end <= r.end]
        if not enclosing:
            return self._raw_span(start, None if end == start else end)
        # Enclosing ranges nest, so the smallest starts last and ends first.
        return self._span(max(enclosing, key=lambda r: (r.start, _neg(r.end))))

    def definition_span(self, qualname: str) -> Span | None:
        """Span of the name in the ``class``/``def`` statement of ``qualname`` (``Net``,
        ``Outer.Inner``, ``make.<locals>.Net``), for whole-model findings."""
        name = ".".join(p for p in qualname.split(".") if p != "<locals>")
        rng = self._definitions.get(name)
        return self._span(rng) if rng is not None else None

    # -- helpers

    def _char_range(self, pos: RawPosition) -> tuple[tuple[int, int], tuple[int, int] | None]:
        start = (pos.line, self._char_col(pos.line, pos.col))
        if pos.end_line is None or pos.end_col is None:
            return start, None
        return start, (pos.end_line, self._char_col(pos.end_line, pos.end_col))

    def _char_col(self, line: int, byte_col: int) -> int:
        """co_positions and ast columns count UTF-8 bytes; Spans count characters."""
        text = self.line_text(line)
        if text.isascii():
            return byte_col
        return len(text.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))

    def _span(self, rng: _Range) -> Span:
        return Span(self.path, rng.start[0], rng.start[1], rng.end[0], rng.end[1])

    def _offset(self, position: tuple[int, int]) -> int:
        """Index into the text of a (line, character column) position."""
        return self._line_starts[position[0] - 1] + position[1]

    def _position(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1]

    @functools.cached_property
    def _line_starts(self) -> list[int]:
        return [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", self._text)]

    def _raw_span(self, start: tuple[int, int], end: tuple[int, int] | None) -> Span:
        if end is None:
            return Span(self.path, start[0], start[1])
        return Span(self.path, start[0], start[1], end[0], end[1])


def _neg(key: tuple[int, int]) -> tuple[int, int]:
    return (-key[0], -key[1])


@functools.lru_cache(maxsize=64)
def _cached_index(path: str, mtime_ns: int, size: int) -> SourceIndex:
    return SourceIndex(path)


def index_for(path: str) -> SourceIndex | None:
    """The parsed index of ``path``, re-parsed only when the file changes; None if the file
    cannot be read."""
    try:
        st = os.stat(path)
        return _cached_index(path, st.st_mtime_ns, st.st_size)
    except (OSError, UnicodeDecodeError, SyntaxError):
        # SyntaxError: a bad coding cookie, from tokenize.detect_encoding.
        return None


def to_span(pos: RawPosition, index_for=index_for) -> Span:
    """``pos`` as a clean Span: construction sites via ``span_for_construction``, call
    sites via ``span_for_call``; the raw position when the file cannot be read."""
    index = index_for(pos.path)
    if index is None:
        return Span(pos.path, pos.line, pos.col, pos.end_line, pos.end_col)
    if pos.kind == CONSTRUCTION:
        return index.span_for_construction(pos)
    return index.span_for_call(pos)


def construction_span(pos: RawPosition) -> Span:
    """Span of a module's construction site (``record_constructions``)."""
    return to_span(pos._replace(kind=CONSTRUCTION))


def call_span(pos: RawPosition) -> Span:
    """Span of a functional op's call site (``user_call_site``)."""
    return to_span(pos._replace(kind=CALL))
