"""``archlint lsp``: a language server that shows archlint's findings in any LSP editor.

The server process never imports torch: each file is checked by running archlint's own
command line (``python -m archlint check FILE --output-format json``) in a child process with
the interpreter the project's torch lives in; that child analyses in archlint's isolated
workers (timeout, memory cap). See docs/editors.md for the behaviour and editor set-up.

- ``server``: the protocol handlers (pygls);
- ``runs``: one run per document, newest wins, static pass first and verified pass after;
- ``convert``: findings to diagnostics, positions, suppression edits and hover text.
"""
