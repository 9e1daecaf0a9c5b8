"""`archlint lsp` driven as an editor drives it: the real server over stdio, real workers,
small model files in a temporary workspace.

Each model check costs seconds (a child imports torch), so each test covers one flow end to
end and most run with verification off.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

pytest.importorskip("pygls")
pytest_lsp = pytest.importorskip("pytest_lsp")

from lsprotocol import types  # noqa: E402
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BAD_STACK = (REPO / "fixtures" / "ARC103" / "bad_bn_relu_stack.py").read_text(encoding="utf-8")
STACK_LINE = "            layers += [nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU()]"
# Runs must use the cache in the test that asks for one (tests/conftest.py turns it off).
ENV = {k: v for k, v in os.environ.items() if k != "ARCHLINT_NO_CACHE"}
# Generous: the machine running the suite may be loaded.
WAIT = 90.0
# A verified pass that also verifies a fix checks and measures an edited copy: about twice as
# long (BAD_STACK under load 10: 24 s without, 42-54 s with). Its runs get a longer --timeout
# too, since a fix that runs out of time is dropped.
FIX_TIMEOUT = 150
FIX_WAIT = 200.0


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "archlint", "lsp"], server_env=ENV))
async def client(lsp_client: LanguageClient):
    published: list[types.PublishDiagnosticsParams] = []
    handler = lsp_client.protocol.fm.features[types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS]

    def record(*args):
        published.append(args[-1])
        return handler(*args)

    lsp_client.protocol.fm.features[types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS] = record
    lsp_client.published = published

    # The test client lacks this request that editors answer (the server watches config files).
    @lsp_client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def register(params: types.RegistrationParams) -> None:
        lsp_client.registrations = params.registrations

    yield
    await lsp_client.shutdown_session()


async def start(client: LanguageClient, root: Path, editor: str = "visual-studio-code", **settings) -> None:
    client.set_configuration({"archlint": settings})
    await client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities(editor),
        root_uri=root.as_uri(),
        workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name=root.name)],
        initialization_options={"archlint": settings},
    ))


async def publishes(client: LanguageClient, uri: str, after: int, count: int = 1, wait: float = WAIT) -> list[types.PublishDiagnosticsParams]:
    """The next ``count`` publishes for ``uri`` after index ``after`` of the record."""
    end = time.monotonic() + wait
    while time.monotonic() < end:
        mine = [p for p in client.published[after:] if p.uri == uri]
        if len(mine) >= count:
            return mine[:count]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no diagnostics for {uri} within {wait} s; got {client.published[after:]}")


def open_doc(client: LanguageClient, path: Path) -> str:
    uri = path.as_uri()
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=uri, language_id="python", version=1, text=path.read_text(encoding="utf-8"))))
    return uri


def save(client: LanguageClient, path: Path, text: str, version: int) -> None:
    """What an editor does on save: the buffer changes, then the file is written."""
    uri = path.as_uri()
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)]))
    path.write_text(text, encoding="utf-8")
    client.text_document_did_save(types.DidSaveTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri)))


class Codes(list):
    """The codes of a publish, compared as a list; a failed comparison shows the messages."""

    def __init__(self, params: types.PublishDiagnosticsParams):
        super().__init__(d.code for d in params.diagnostics)
        self.messages = [d.message for d in params.diagnostics]

    def __repr__(self) -> str:
        return f"{list(self)!r} ({self.messages})"


codes = Codes


@pytest.mark.asyncio
async def test_static_first_then_verified_close_cache_and_settings(client: LanguageClient, tmp_path: Path):
    model = tmp_path / "net.py"
    model.write_text(BAD_STACK, encoding="utf-8")
    await start(client, tmp_path, verify=True, timeout=FIX_TIMEOUT)
    uri = open_doc(client, model)

    static, verified = await publishes(client, uri, 0, count=2, wait=FIX_WAIT)
    assert codes(static) == ["ARC103"] and codes(verified) == ["ARC103"]
    assert static.version == verified.version == 1
    first, second = static.diagnostics[0], verified.diagnostics[0]
    assert first.data == {"phase": "static", "status": "predicted", "predicted": pytest.approx(30.57, abs=0.01), "measured": None}
    assert second.data["phase"] == "verified" and second.data["status"] == "confirmed" and second.data["measured"] > 3
    # The verified pass asked for fixes (the static one does not): ARC103's is verified.
    assert set(second.data) == {"phase", "status", "predicted", "measured", "fix"}
    assert second.data["fix"]["applicability"] == "safe" and second.data["fix"]["version"] == 1
    assert second.source == "archlint" and second.severity == types.DiagnosticSeverity.Warning
    assert second.code_description.href.endswith("/rules/deep-plain-stack")
    # Line 10 (0-based 9), on `nn.Linear(width, width)`.
    assert (second.range.start.line, second.range.start.character) == (9, STACK_LINE.index("nn.Linear"))
    # The verified pass showed work-done progress, begun and ended.
    kinds = [p.kind for reports in client.progress_reports.values() for p in reports]
    assert kinds.count("begin") == 1 and kinds.count("end") == 1

    # Closing clears the file's diagnostics.
    seen = len(client.published)
    client.text_document_did_close(types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri)))
    (closed,) = await publishes(client, uri, seen)
    assert closed.diagnostics == ()

    # Reopening answers from the cache with the verified result at once.
    seen = len(client.published)
    started = time.monotonic()
    uri = open_doc(client, model)
    (hit,) = await publishes(client, uri, seen)
    assert time.monotonic() - started < 5
    assert hit.diagnostics[0].data["phase"] == "verified" and hit.diagnostics[0].data["status"] == "confirmed"
    # The entry was looked up with the fixes setting the verified run used, and kept the fix.
    assert hit.diagnostics[0].data["fix"]["message"] == second.data["fix"]["message"]

    # verify off, from the client: the file is checked again, statically only.
    seen = len(client.published)
    client.set_configuration({"archlint": {"verify": False}})
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
    (off,) = await publishes(client, uri, seen)
    assert codes(off) == ["ARC103"] and off.diagnostics[0].data["phase"] == "static"
    # No verified pass follows: it would begin its progress right after the static one.
    await asyncio.sleep(1.0)
    kinds = [p.kind for reports in client.progress_reports.values() for p in reports]
    assert kinds.count("begin") == 1 and client.published[-1] is off


@pytest.mark.asyncio
async def test_newest_save_wins(client: LanguageClient, tmp_path: Path):
    model = tmp_path / "net.py"
    model.write_text(BAD_STACK, encoding="utf-8")
    await start(client, tmp_path, verify=False)
    # Opening starts a run; two quick saves supersede it and then each other.
    uri = open_doc(client, model)
    seen = 0
    save(client, model, BAD_STACK.replace("depth=18", "depth=19"), 2)
    save(client, model, BAD_STACK.replace("depth=18", "depth=20"), 3)
    (latest,) = await publishes(client, uri, seen)
    assert latest.version == 3 and "20 Linear" in latest.diagnostics[0].message
    # The earlier runs were cancelled: give them time to publish if they were still alive.
    await asyncio.sleep(1.0)
    assert [p for p in client.published[seen:] if p.uri == uri] == [latest]

    # The nearest [tool.archlint] applies; a change to it (a watched file) checks open files again.
    (tmp_path / "pyproject.toml").write_text('[tool.archlint]\nselect = ["ARC9"]\n', encoding="utf-8")
    seen = len(client.published)
    client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams(changes=[types.FileEvent(
        uri=(tmp_path / "pyproject.toml").as_uri(), type=types.FileChangeType.Created)]))
    (ignored,) = await publishes(client, uri, seen)
    assert ignored.diagnostics == ()


@pytest.mark.asyncio
async def test_utf16_columns_code_action_and_hover(client: LanguageClient, tmp_path: Path):
    model = tmp_path / "net.py"
    prefix = '_ = "😀é"; '
    model.write_text(BAD_STACK.replace(STACK_LINE, STACK_LINE.replace("layers", prefix + "layers", 1)), encoding="utf-8")
    await start(client, tmp_path, verify=False)
    uri = open_doc(client, model)
    (found,) = await publishes(client, uri, 0)
    (diagnostic,) = found.diagnostics
    text_before = " " * 12 + prefix + "layers += ["
    # Code points before the span: len(text_before); UTF-16 units: one more for the emoji.
    assert diagnostic.range.start.character == len(text_before.encode("utf-16-le")) // 2 == len(text_before) + 1

    actions = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=diagnostic.range,
        context=types.CodeActionContext(diagnostics=[diagnostic])))
    titles = [a.title for a in actions]
    assert titles == ["Suppress ARC103 for this line", "Suppress ARC103 in this file"]
    (edit,) = actions[0].edit.changes[uri]
    assert edit.new_text == "  # noqa: ARC103"
    lines = model.read_text(encoding="utf-8").splitlines(keepends=True)
    row = lines[edit.range.start.line]
    # The edit's columns are UTF-16 too: it goes at the end of the line.
    assert edit.range.start.character == len(row.rstrip("\n").encode("utf-16-le")) // 2
    lines[edit.range.start.line] = row.rstrip("\n") + edit.new_text + "\n"
    seen = len(client.published)
    save(client, model, "".join(lines), 2)
    (after,) = await publishes(client, uri, seen)
    assert after.diagnostics == ()  # suppressed, and the suppression is used (no ARC902)

    # Hover on the code in the new comment shows the rule's documentation.
    line = edit.range.start.line
    code_col = len((lines[line].split("# noqa: ")[0] + "# noqa: ").encode("utf-16-le")) // 2
    shown = await client.text_document_hover_async(types.HoverParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=line, character=code_col + 2)))
    assert shown.contents.value.startswith("# ARC103 deep-plain-stack (warning)")
    assert "## What it does" in shown.contents.value or "What it does" in shown.contents.value
    assert shown.range.start.character == code_col


@pytest.mark.asyncio
async def test_hanging_model_times_out_and_the_server_goes_on(client: LanguageClient, tmp_path: Path):
    model = tmp_path / "net.py"
    hanging = BAD_STACK.replace("        super().__init__()\n", "        super().__init__()\n        while True:\n            pass\n", 1)
    model.write_text(hanging, encoding="utf-8")
    # Long enough for the fixed model's check on a loaded machine; each second is paid once.
    await start(client, tmp_path, verify=False, timeout=6)
    uri = open_doc(client, model)
    (stopped,) = await publishes(client, uri, 0)
    (diagnostic,) = stopped.diagnostics
    assert diagnostic.code == "ARC903" and "did not finish within 6 s" in diagnostic.message
    assert diagnostic.range.start.line in (7, 8)  # the loop's lines

    seen = len(client.published)
    save(client, model, BAD_STACK, 2)
    (fixed,) = await publishes(client, uri, seen)
    assert codes(fixed) == ["ARC103"]


@pytest.mark.asyncio
async def test_syntax_error_in_the_unsaved_buffer_on_type(client: LanguageClient, tmp_path: Path):
    model = tmp_path / "net.py"
    model.write_text("import torch\n", encoding="utf-8")
    await start(client, tmp_path, verify=False, run="onType")
    uri = open_doc(client, model)
    (clean,) = await publishes(client, uri, 0)
    assert clean.diagnostics == ()
    seen = len(client.published)
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text='import torch\nx = ("é😀", \n')]))
    (typed,) = await publishes(client, uri, seen)
    assert typed.version == 2 and codes(typed) == ["ARC900"]
    assert typed.diagnostics[0].data["phase"] == "buffer"


@pytest.mark.asyncio
async def test_an_interpreter_that_cannot_run_is_one_error(client: LanguageClient, tmp_path: Path):
    model = tmp_path / "net.py"
    model.write_text(BAD_STACK, encoding="utf-8")
    await start(client, tmp_path, verify=False, python=str(tmp_path / "no-such-python"))
    uri = open_doc(client, model)
    (failed,) = await publishes(client, uri, 0)
    (diagnostic,) = failed.diagnostics
    assert "cannot start" in diagnostic.message and "archlint.python" in diagnostic.message
    assert diagnostic.severity == types.DiagnosticSeverity.Error and diagnostic.range.start.line == 0
    assert diagnostic.data["phase"] == "static"

    # "Verify this file now" runs the verified pass (only), also with verify off.
    seen = len(client.published)
    await client.workspace_execute_command_async(types.ExecuteCommandParams(command="archlint.verifyFile", arguments=[uri]))
    (again,) = await publishes(client, uri, seen)
    assert again.diagnostics[0].data["phase"] == "verified" and "cannot start" in again.diagnostics[0].message


def apply_edits(text: str, edits) -> str:
    """``text`` with LSP text edits (UTF-16 columns) applied, as an editor applies them."""
    lines = text.splitlines(keepends=True)

    def offset(position: types.Position) -> int:
        if position.line >= len(lines):
            return len(text)
        line = lines[position.line]
        units = 0
        for i, char in enumerate(line):
            if units >= position.character:
                return sum(map(len, lines[:position.line])) + i
            units += len(char.encode("utf-16-le")) // 2
        return sum(map(len, lines[:position.line])) + len(line)

    spans = sorted(((offset(e.range.start), offset(e.range.end), e.new_text) for e in edits), reverse=True)
    for start, end, new_text in spans:  # from the end, so earlier offsets stay valid
        text = text[:start] + new_text + text[end:]
    return text


async def code_actions(client: LanguageClient, uri: str, diagnostic: types.Diagnostic) -> list[types.CodeAction]:
    return await asyncio.wait_for(client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=diagnostic.range,
        context=types.CodeActionContext(diagnostics=[diagnostic]))), 30)


@pytest.mark.asyncio
async def test_verified_fix_is_a_code_action_while_the_text_is_the_checked_one(client: LanguageClient, tmp_path: Path):
    model = tmp_path / "net.py"
    model.write_text(BAD_STACK, encoding="utf-8")
    await asyncio.wait_for(start(client, tmp_path, verify=True, timeout=FIX_TIMEOUT), 30)
    uri = open_doc(client, model)
    static, verified = await publishes(client, uri, 0, count=2, wait=FIX_WAIT)
    assert "fix" not in static.diagnostics[0].data  # an unverified fix is not offered
    (diagnostic,) = verified.diagnostics
    fix = diagnostic.data["fix"]
    assert fix["applicability"] == "safe" and fix["version"] == 1 and "fix verified" in fix["message"]

    actions = await code_actions(client, uri, diagnostic)
    assert [a.title for a in actions] == [f"Fix ARC103: {fix['message']}", "Suppress ARC103 for this line", "Suppress ARC103 in this file"]
    action = actions[0]
    assert action.kind == types.CodeActionKind.QuickFix and action.is_preferred and list(action.diagnostics) == [diagnostic]
    # Tied to the version the run checked (the client supports versioned document edits).
    (change,) = action.edit.document_changes
    assert change.text_document.uri == uri and change.text_document.version == 1
    # Applying it gives the fixed source that `archlint check --fix` writes.
    diff = (REPO / "fixtures" / "ARC103" / "bad_bn_relu_stack.fix.diff").read_text(encoding="utf-8").splitlines(keepends=True)
    removed = "".join(line[1:] for line in diff if line.startswith("-") and not line.startswith("---"))
    added = "".join(line[1:] for line in diff if line.startswith("+") and not line.startswith("+++"))
    assert removed in BAD_STACK
    fixed = apply_edits(BAD_STACK, change.edits)
    assert fixed == BAD_STACK.replace(removed, added)

    # Once the buffer changed, the edits no longer fit its text: no fix, still the suppressions.
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=fixed)]))
    actions = await code_actions(client, uri, diagnostic)
    assert [a.title for a in actions] == ["Suppress ARC103 for this line", "Suppress ARC103 in this file"]
    # Also when the text is changed back: the fix belongs to the version the run checked.
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=3),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=BAD_STACK)]))
    actions = await code_actions(client, uri, diagnostic)
    assert [a.title for a in actions] == ["Suppress ARC103 for this line", "Suppress ARC103 in this file"]

    # Saved, the fixed file is checked again: nothing left, statically and measured.
    seen = len(client.published)
    save(client, model, fixed, 4)
    static, verified = await publishes(client, uri, seen, count=2)
    assert codes(static) == [] and codes(verified) == [] and verified.version == 4


def test_lsp_without_pygls_says_how_to_install(tmp_path: Path):
    import subprocess

    # A pygls that cannot be imported, as in an install without the extra.
    (tmp_path / "pygls").mkdir()
    (tmp_path / "pygls" / "__init__.py").write_text("raise ImportError('No module named pygls')\n")
    env = {**ENV, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "archlint", "lsp"], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert run.returncode != 0 and 'pip install "archlint[lsp]"' in run.stderr
    assert run.stdout == ""


def _snippets(lang: str) -> list[str]:
    text = (REPO / "docs" / "editors.md").read_text(encoding="utf-8")
    return re.findall(rf"```{lang}\n(.*?)```", text, re.DOTALL)


def test_editor_snippets_parse():
    (helix,) = _snippets("toml")
    config = tomllib.loads(helix)
    server = config["language-server"]["archlint"]
    assert (server["command"], server["args"]) == ("archlint", ["lsp"])
    python = {lang["name"]: lang for lang in config["language"]}["python"]
    assert "archlint" in python["language-servers"] and len(python["language-servers"]) > 1
    for snippet in _snippets("json"):
        json.loads(snippet)
    sublime = [json.loads(s) for s in _snippets("json") if "clients" in s]
    assert sublime[0]["clients"]["archlint"]["command"] == ["archlint", "lsp"]


def test_neovim_snippets_load(tmp_path: Path):
    import shutil
    import subprocess

    nvim = shutil.which("nvim")
    if nvim is None:
        pytest.skip("Neovim is not installed")
    config, enable = _snippets("lua")
    (tmp_path / "archlint.lua").write_text(config, encoding="utf-8")
    (tmp_path / "enable.lua").write_text(enable, encoding="utf-8")
    # The config file must evaluate to the server's table; the enable line must parse (its
    # API, vim.lsp.enable, needs Neovim 0.11).
    script = (
        f"local c = dofile('{tmp_path / 'archlint.lua'}'); assert(c.cmd[1] == 'archlint' and c.cmd[2] == 'lsp');"
        f"assert(c.filetypes[1] == 'python'); assert(loadfile('{tmp_path / 'enable.lua'}')); print('ok')"
    )
    run = subprocess.run([nvim, "--headless", "-n", "-u", "NONE", "-c", f"lua {script}", "-c", "qa!"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert "ok" in run.stderr + run.stdout, run.stderr


def test_emacs_snippet_loads(tmp_path: Path):
    import shutil
    import subprocess

    emacs = shutil.which("emacs")
    if emacs is None:
        pytest.skip("Emacs is not installed")
    (snippet,) = _snippets("elisp")
    (tmp_path / "archlint.el").write_text(snippet, encoding="utf-8")
    # eglot itself is not loaded (Emacs 28 lacks it): the snippet must add archlint to its list.
    code = (f'(progn (defvar eglot-server-programs nil) (provide (quote eglot)) (load "{tmp_path / "archlint.el"}")'
            ' (princ (format "%S" (car eglot-server-programs))))')
    run = subprocess.run([emacs, "--batch", "-Q", "--eval", code], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.stdout == '((python-mode python-ts-mode) "archlint" "lsp")', run.stderr


# The conversions the server applies, on their own (no server, no model).


def _codec():
    from pygls.workspace import PositionCodec

    return PositionCodec(encoding=types.PositionEncodingKind.Utf16)


def test_suppress_line_merges_into_the_existing_noqa():
    from archlint.lsp import convert

    source = 'x = "é"  # noqa: E501\ny = 2\n'
    edit = convert.suppress_line_edit(source, 0, "ARC103", _codec())
    line = source.splitlines()[0]
    col = len(line)  # after "E501"; all characters here are in the BMP: UTF-16 = code points
    assert edit.new_text == ", ARC103" and (edit.range.start.line, edit.range.start.character) == (0, col)
    merged = line[:col] + edit.new_text + line[col:]
    from archlint import suppress

    (directive,) = suppress.parse(merged)
    assert [c.code for c in directive.codes] == ["ARC103"]  # E501 stays, for the other tool

    # A `#` inside a string is not a comment: the new comment goes at the end of the line.
    edit = convert.suppress_line_edit('s = "# noqa: E501"\n', 0, "ARC103", _codec())
    assert edit.new_text == "  # noqa: ARC103" and edit.range.start.character == len('s = "# noqa: E501"')


def test_suppress_in_file_extends_the_file_ignore_or_adds_one_after_the_shebang():
    from archlint.lsp import convert

    source = "#!/usr/bin/env python\nimport torch\n"
    edit = convert.suppress_file_edit(source, "ARC103", _codec())
    assert edit.new_text == "# archlint: file-ignore[ARC103]\n" and edit.range.start.line == 1
    source = "import torch\n# archlint: file-ignore[ARC101]\n"
    edit = convert.suppress_file_edit(source, "ARC103", _codec())
    assert edit.new_text == ", ARC103" and (edit.range.start.line, edit.range.start.character) == (1, len("# archlint: file-ignore[ARC101"))


def test_a_finding_in_another_file_is_related_information(tmp_path: Path):
    from archlint.lsp import convert

    block = tmp_path / "blocks.py"
    block.write_text("import torch.nn as nn\n\nstack = nn.Sequential(nn.Tanh())\n", encoding="utf-8")
    finding = {
        "code": "ARC103", "message": "deep stack", "filename": str(block), "severity": "warning",
        "location": {"row": 3, "column": 9}, "end_location": {"row": 3, "column": 33},
        "status": "predicted", "url": "https://archlint.dev/rules/deep-plain-stack",
    }
    diagnostic = convert.to_diagnostic(finding, "static", str(tmp_path / "net.py"), ["import blocks"], _codec())
    assert diagnostic.range.start == types.Position(line=0, character=0)
    (related,) = diagnostic.related_information
    assert related.location.uri == block.as_uri() and related.location.range.start == types.Position(line=2, character=8)
    plain = convert.to_diagnostic(finding, "static", str(tmp_path / "net.py"), ["import blocks"], _codec(), related_support=False)
    assert plain.related_information is None and f"at {block}:3:9" in plain.message


def test_fixes_are_asked_for_by_verified_runs_unless_turned_off(tmp_path: Path):
    from archlint.lsp import runs

    path = str(tmp_path / "net.py")
    assert "--show-fixes" in runs.command(runs.Config(), path, verify=True)
    assert "--show-fixes" not in runs.command(runs.Config(), path, verify=False)  # a suggestion only
    config, problems = runs.Config.merged({"archlint": {"fixes": False}})
    assert problems == [] and "--show-fixes" not in runs.command(config, path, verify=True)
    config, problems = runs.Config.merged({"fixes": "no"})
    assert config.fixes is True and problems == ["setting archlint.fixes: 'no' is not true or false; ignored"]


def test_fix_edits_are_in_client_units():
    from archlint.lsp import convert

    source = 'x = "😀"; y = nn.ReLU()\nz = 1'
    fix = {"edits": [
        # "ReLU()" is at code points 17 to 23 (1-based, end exclusive): after the emoji, one
        # code point and two UTF-16 units.
        {"content": "LeakyReLU(0.1)", "location": {"row": 1, "column": 17}, "end_location": {"row": 1, "column": 23}},
        # A whole-line edit ending after the last line (no newline at the end): the end of the text.
        {"content": "z = 2\n", "location": {"row": 2, "column": 1}, "end_location": {"row": 3, "column": 1}},
    ]}
    first, second = convert.fix_edits(source, fix, _codec())
    assert (first.range.start, first.range.end) == (types.Position(line=0, character=17), types.Position(line=0, character=23))
    assert second.range.end == types.Position(line=2, character=0)
    assert apply_edits(source, [first, second]) == 'x = "😀"; y = nn.LeakyReLU(0.1)\nz = 2\n'

    # archlint's edits are made on \n text: the new lines get the document's own line break;
    # a text that mixes them gets no edits (as `archlint check --fix` leaves such a file alone).
    (crlf_first, crlf_second) = convert.fix_edits(source.replace("\n", "\r\n"), fix, _codec())
    assert crlf_second.new_text == "z = 2\r\n" and crlf_second.range == second.range and crlf_first.range == first.range
    assert convert.fix_edits("a = 1\r\nb = 2\nc = 3\n", fix, _codec()) is None
