"""The protocol handlers of ``archlint lsp`` (pygls 2).

Diagnostics are pushed (``textDocument/publishDiagnostics`` with the document's version):
archlint's verified pass takes seconds, and several editors cannot be told that a pulled
result is ready. Only protocol messages go to stdout; logs go to stderr and, for problems the
user must act on, to ``window/logMessage``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from archlint import __version__
from archlint.lsp import convert, runs
from archlint.lsp.runs import DEBOUNCE, Config, Outcome, Scheduler

log = logging.getLogger("archlint.lsp")

VERIFY_COMMAND = "archlint.verifyFile"
CONFIG_FILES = ("pyproject.toml", "archlint.toml")


@dataclass
class _Shown:
    """What the editor shows for one open document."""

    run: list[types.Diagnostic] = field(default_factory=list)  # from the last run of the file
    verified: list[dict[str, Any]] | None = None  # the last verified findings
    verified_version: int | None = None  # the document version they were found on
    buffer: types.Diagnostic | None = None  # a syntax error in the unsaved buffer (onType)
    debounce: asyncio.Task | None = None


class ArchlintServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("archlint", __version__, text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.init_options: Any = None
        self.pushed: dict[str, Any] = {}  # settings sent with didChangeConfiguration
        self.configs: dict[str, Config] = {}  # by workspace folder URI ("" outside any)
        self.shown: dict[str, _Shown] = {}
        self._scheduler: Scheduler | None = None

    # Helpers -------------------------------------------------------------------------

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:  # needs the running loop
            self._scheduler = Scheduler(self._publish_outcome, self._progress)
        return self._scheduler

    def folder_of(self, path: str) -> str:
        """The URI of the workspace folder holding ``path`` (the innermost), else ""."""
        best = ""
        best_len = -1
        for uri in self.workspace.folders:
            root = to_fs_path(uri) or ""
            if (path == root or path.startswith(root.rstrip(os.sep) + os.sep)) and len(root) > best_len:
                best, best_len = uri, len(root)
        if not best and self.workspace.root_uri:
            root = to_fs_path(self.workspace.root_uri) or ""
            if root and path.startswith(root.rstrip(os.sep) + os.sep):
                best = self.workspace.root_uri
        return best

    def cwd_for(self, path: str) -> str:
        folder = self.folder_of(path)
        return (to_fs_path(folder) if folder else None) or os.path.dirname(path)

    async def config_for(self, path: str) -> Config:
        folder = self.folder_of(path)
        if folder in self.configs:
            return self.configs[folder]
        layers: list[Any] = [self.init_options, self.pushed]
        caps = self.client_capabilities.workspace
        if caps is not None and caps.configuration:
            try:
                got = await self.workspace_configuration_async(types.ConfigurationParams(items=[
                    types.ConfigurationItem(scope_uri=folder or None, section="archlint"),
                ]))
                layers += list(got or [])
            except Exception as exc:  # a client that fails the request: the options still apply
                log.warning("workspace/configuration failed: %s", exc)
        config, problems = Config.merged(*layers)
        for problem in problems:
            self.tell(problem, types.MessageType.Warning)
        self.configs[folder] = config
        return config

    def tell(self, message: str, kind: types.MessageType = types.MessageType.Info) -> None:
        log.info("%s", message)
        self.window_log_message(types.LogMessageParams(type=kind, message=f"archlint: {message}"))

    def _doc(self, uri: str):
        return self.workspace.get_text_document(uri)

    def _lines(self, uri: str) -> list[str]:
        return self._doc(uri).source.splitlines()

    def fix_for(self, uri: str, code: str, line: int) -> dict[str, Any] | None:
        """The verified fix of the finding ``code`` shown on ``line``, if its edits still apply:
        the document is at the version the run checked, and its text is the saved file's (the
        run checked the file on disk; a buffer opened with unsaved changes differs from it)."""
        shown = self.shown.get(uri)
        doc = self._doc(uri)
        path = to_fs_path(uri)
        for diagnostic in shown.run if shown else []:
            data = diagnostic.data if isinstance(diagnostic.data, dict) else {}
            fix = data.get("fix")
            if diagnostic.code != code or diagnostic.range.start.line != line or not fix:
                continue
            # A suggestion (display-only) was not verified: archlint --fix never applies it either.
            if fix.get("applicability") != "safe" or fix.get("version") != doc.version or path is None:
                return None
            try:
                with open(path, encoding="utf-8", newline="") as f:
                    saved = f.read()
            except (OSError, UnicodeDecodeError):
                return None
            return fix if saved == doc.source else None
        return None

    def document_edit(self, uri: str, version: int | None, edits: list[types.TextEdit]) -> types.WorkspaceEdit:
        """Edits of one document, tied to its version where the client supports that, so an
        editor whose text changed meanwhile refuses them instead of applying them to other text."""
        caps = self.client_capabilities.workspace
        if caps and caps.workspace_edit and caps.workspace_edit.document_changes and version is not None:
            return types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(
                text_document=types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version), edits=edits)])
        return types.WorkspaceEdit(changes={uri: edits})

    # Publishing ----------------------------------------------------------------------

    def _publish_outcome(self, uri: str, version: int | None, phase: str, outcome: Outcome) -> None:
        shown = self.shown.get(uri)
        if shown is None:  # closed meanwhile
            return
        path = to_fs_path(uri) or uri
        lines = self._lines(uri)
        codec = self.workspace.position_codec
        caps = self.client_capabilities.text_document
        related = bool(caps and caps.publish_diagnostics and caps.publish_diagnostics.related_information)
        if outcome.error:
            self.tell(f"{path}: {outcome.error}", types.MessageType.Warning)
            shown.run = [convert.message_diagnostic(outcome.error, phase)]
        else:
            previous: dict[tuple[str, int], dict[str, Any]] = {}
            if phase == "verified":
                shown.verified, shown.verified_version = outcome.findings, version
            elif shown.verified is not None:
                # While the file is verified again, a finding the static pass still makes
                # keeps its last verified form (status, measured value, and its fix with
                # the version that fix was computed on).
                previous = {(f["code"], f["location"]["row"]): f for f in shown.verified}
            triples = []  # (finding, phase, the document version it was found on)
            for f in outcome.findings:
                kept = previous.get((f["code"], f["location"]["row"]))
                triples.append((kept, "verified", shown.verified_version) if kept else (f, phase, version))
            shown.run = [convert.to_diagnostic(f, p, path, lines, codec, related, v) for f, p, v in triples]
        self._publish(uri, version)

    def _publish(self, uri: str, version: int | None = None) -> None:
        shown = self.shown.get(uri)
        diagnostics = [] if shown is None else [*shown.run, *([shown.buffer] if shown.buffer else [])]
        self.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=uri, version=version, diagnostics=diagnostics))

    @contextlib.asynccontextmanager
    async def _progress(self, uri: str, path: str, cancel):
        """Work-done progress around a verified pass, when the client supports it; the
        user's cancel kills the worker."""
        window = self.client_capabilities.window
        if not (window and window.work_done_progress):
            yield
            return
        token = f"archlint-{uuid.uuid4()}"
        try:
            # Shielded: a run cancelled while the client answers must not break the token.
            await asyncio.shield(self.work_done_progress.create_async(token))
        except Exception as exc:
            log.debug("no progress: %s", exc)
            yield
            return
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(
            title="archlint", message=f"verifying {os.path.basename(path)}", cancellable=True))
        future = self.work_done_progress.tokens.get(token)
        loop = asyncio.get_running_loop()
        if future is not None:
            future.add_done_callback(lambda f: f.cancelled() and loop.call_soon_threadsafe(cancel))
        try:
            yield
        finally:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd())
            self.work_done_progress.tokens.pop(token, None)

    # Runs ----------------------------------------------------------------------------

    async def run_file(self, uri: str, *, static: bool = True, verify: bool | None = None) -> None:
        path = to_fs_path(uri)
        if path is None or not path.endswith(".py"):
            return
        self.shown.setdefault(uri, _Shown())
        generation = self.scheduler.claim(uri, self._doc(uri).version)
        config = await self.config_for(path)
        self.scheduler.start(uri, generation, path, self.cwd_for(path), config, static=static, verify=verify)

    async def rerun_all(self) -> None:
        self.configs.clear()
        for shown in self.shown.values():
            shown.verified = None  # verified under the old settings
        for uri in list(self.shown):
            await self.run_file(uri)

    async def check_buffer(self, uri: str) -> None:
        """The static pass of an unsaved buffer: a syntax check, without importing anything
        (the model is built from the saved file only; archlint never writes the user's
        buffer to disk)."""
        await asyncio.sleep(DEBOUNCE)
        shown = self.shown.get(uri)
        if shown is None:
            return
        doc = self._doc(uri)
        lines = doc.source.splitlines()
        shown.buffer = convert.syntax_diagnostic(doc.source, to_fs_path(uri) or uri, lines, self.workspace.position_codec)
        self._publish(uri, doc.version)


server = ArchlintServer()


@server.feature(types.INITIALIZE)
def initialize(ls: ArchlintServer, params: types.InitializeParams) -> None:
    ls.init_options = params.initialization_options


@server.feature(types.INITIALIZED)
async def initialized(ls: ArchlintServer, params: types.InitializedParams) -> None:
    asyncio.get_running_loop().run_in_executor(None, runs.warm_up)
    caps = ls.client_capabilities.workspace
    watched = caps.did_change_watched_files if caps else None
    if not (watched and watched.dynamic_registration):
        return
    try:
        await ls.client_register_capability_async(types.RegistrationParams(registrations=[types.Registration(
            id="archlint-config-files",
            method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
            register_options=types.DidChangeWatchedFilesRegistrationOptions(watchers=[
                types.FileSystemWatcher(glob_pattern=f"**/{name}") for name in CONFIG_FILES
            ]),
        )]))
    except Exception as exc:  # the client said it could, then did not: no watching
        log.warning("cannot watch the config files: %s", exc)


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
async def did_open(ls: ArchlintServer, params: types.DidOpenTextDocumentParams) -> None:
    await ls.run_file(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))
async def did_save(ls: ArchlintServer, params: types.DidSaveTextDocumentParams) -> None:
    uri = params.text_document.uri
    shown = ls.shown.get(uri)
    if shown is not None:
        if shown.debounce is not None:
            shown.debounce.cancel()
        shown.buffer = None  # the saved text's own check reports a syntax error now
    await ls.run_file(uri)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
async def did_change(ls: ArchlintServer, params: types.DidChangeTextDocumentParams) -> None:
    uri = params.text_document.uri
    shown = ls.shown.get(uri)
    path = to_fs_path(uri)
    if shown is None or path is None or (await ls.config_for(path)).run != "onType":
        return
    if shown.debounce is not None:
        shown.debounce.cancel()
    shown.debounce = asyncio.ensure_future(ls.check_buffer(uri))


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: ArchlintServer, params: types.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    ls.scheduler.stop(uri)
    shown = ls.shown.pop(uri, None)
    if shown is not None and shown.debounce is not None:
        shown.debounce.cancel()
    ls._publish(uri)


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def did_change_configuration(ls: ArchlintServer, params: types.DidChangeConfigurationParams) -> None:
    # Clients that push settings (rather than answer workspace/configuration) send them here.
    if isinstance(params.settings, dict) and isinstance(params.settings.get("archlint"), dict):
        ls.pushed = params.settings["archlint"]
    await ls.rerun_all()


@server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
async def did_change_watched_files(ls: ArchlintServer, params: types.DidChangeWatchedFilesParams) -> None:
    if any(Path(to_fs_path(c.uri) or "").name in CONFIG_FILES for c in params.changes):
        await ls.rerun_all()


@server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.QuickFix]))
def code_action(ls: ArchlintServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    uri = params.text_document.uri
    doc = ls._doc(uri)
    source = doc.source
    codec = ls.workspace.position_codec
    fixes, suppressions = [], []
    seen = set()
    for diagnostic in params.context.diagnostics:
        if diagnostic.source != convert.SOURCE or not isinstance(diagnostic.code, str) or not diagnostic.code.startswith("ARC"):
            continue
        code, line = diagnostic.code, diagnostic.range.start.line
        if (code, line) in seen:
            continue
        seen.add((code, line))
        fix = ls.fix_for(uri, code, line)
        edits = convert.fix_edits(source, fix, codec) if fix is not None else None
        if edits:
            fixes.append(types.CodeAction(
                title=f"Fix {code}: {fix['message']}", kind=types.CodeActionKind.QuickFix, diagnostics=[diagnostic],
                edit=ls.document_edit(uri, doc.version, edits),
            ))
        for title, edit in (
            (f"Suppress {code} for this line", convert.suppress_line_edit(source, line, code, codec)),
            (f"Suppress {code} in this file", convert.suppress_file_edit(source, code, codec)),
        ):
            suppressions.append(types.CodeAction(
                title=title, kind=types.CodeActionKind.QuickFix, diagnostics=[diagnostic],
                edit=types.WorkspaceEdit(changes={uri: [edit]}),
            ))
    for action in fixes:  # an editor may apply a preferred fix without asking: only when there is one
        action.is_preferred = len(fixes) == 1
    return [*fixes, *suppressions]


@server.feature(types.TEXT_DOCUMENT_HOVER)
def hover(ls: ArchlintServer, params: types.HoverParams) -> types.Hover | None:
    doc = ls._doc(params.text_document.uri)
    position = ls.workspace.position_codec.position_from_client_units(doc.lines, params.position)
    found = convert.code_at(doc.source, position.line, position.character)
    if found is None:
        return None
    from archlint import rule as rules_api
    from archlint import ruledocs

    code, rng = found
    rule = rules_api.registry().get(code)
    if rule is None:
        return None
    return types.Hover(
        contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=ruledocs.page(rule)),
        range=ls.workspace.position_codec.range_to_client_units(doc.source.splitlines(), rng),
    )


@server.command(VERIFY_COMMAND)
async def verify_now(ls: ArchlintServer, *args: Any) -> None:
    """Verify a file now (also with ``verify`` off): arguments ``[uri]`` or
    ``[{"uri": uri}]``."""
    uri = None
    for arg in args:
        if isinstance(arg, str):
            uri = arg
        elif isinstance(arg, dict):
            uri = arg.get("uri")
        elif isinstance(arg, (list, tuple)) and arg:
            first = arg[0]
            uri = first if isinstance(first, str) else first.get("uri") if isinstance(first, dict) else None
    if uri is None or uri not in ls.shown:
        ls.tell(f"{VERIFY_COMMAND}: give the URI of an open file", types.MessageType.Warning)
        return
    await ls.run_file(uri, static=False, verify=True)


def main(tcp: bool = False, host: str = "127.0.0.1", port: int = 2087) -> None:
    logging.basicConfig(level=logging.INFO, format="archlint lsp: %(message)s", stream=sys.stderr)
    logging.getLogger("pygls").setLevel(logging.WARNING)  # it logs every message at INFO
    if tcp:
        server.start_tcp(host, port)
        return
    # Protocol messages only on stdout: anything else printed in this process goes to stderr.
    out = sys.stdout.buffer
    sys.stdout = sys.stderr
    server.start_io(sys.stdin.buffer, out)
