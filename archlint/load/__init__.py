"""Load a model file and build what in it to lint: the first stages of the pipeline.

- ``isolation``: ``isolated_import`` imports the file the way pytest imports test files and
  puts ``sys.path``/``sys.modules`` back afterwards; an import that fails becomes a
  ``LoadError`` at the line to blame.
- ``discovery``: ``discover`` lists the models of the file with zero configuration (classes
  and factories that need no arguments, recognised statically; builds the file itself shows,
  in ``source_builds``, evaluated without running the code around them).
- ``explicit``: ``explicit_entry`` for ``--model`` and ``[[tool.archlint.models]]``, which
  replace discovery for their file.
- ``building``: ``build_all`` builds the entries (on the meta device first, for real within
  the memory budget) and keeps only the top-level models.
"""

from archlint.load.building import build_all, model_bytes
from archlint.load.discovery import BuiltModel, ClassNeedingArgs, Discovery, ModelEntry, NotBuilt, discover
from archlint.load.explicit import explicit_entry
from archlint.load.isolation import (
    BuildError,
    LoadError,
    describe_exception,
    innermost_line_in,
    isolated_import,
    module_name_for,
    preserved_torch_globals,
    project_root,
)

__all__ = [
    "BuildError", "BuiltModel", "ClassNeedingArgs", "Discovery", "LoadError", "ModelEntry", "NotBuilt",
    "build_all", "describe_exception", "discover", "explicit_entry", "innermost_line_in", "isolated_import",
    "model_bytes", "module_name_for", "preserved_torch_globals", "project_root",
]
