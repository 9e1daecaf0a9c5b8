"""The language server as an editor sees it: time from didOpen to the first diagnostics for a
CIFAR ResNet-18 file, cold (no cache) and on a cache hit, and the server's idle memory.

    python benchmarks/bench_lsp.py [--repeat 3] [--model FILE] [--no-fixes]

Each round copies fixtures/architectures/good_resnet18_cifar.py (or ``--model``) into a
fresh temporary workspace (so its cache is empty) and starts `archlint lsp` over stdio, with
the server's default settings: its verified pass also proposes and verifies fixes, which
costs something only for a file with a fixable finding (``--no-fixes``: the setting
``fixes = false``; e.g. ``--model fixtures/ARC103/bad_bn_relu_stack.py`` has one):

- cold: didOpen to the first publish (the static pass, which imports torch in a fresh
  child) and to the verified publish;
- cache hit: a second server opens the same file; the verified result comes from the cache
  without starting a child;
- for reference, the same static pass from the command line (``archlint check FILE
  --no-verify -n``), which is what the server runs in its child;
- and ``python -c "import torch"``, which every check's child pays once;
- idle RSS: VmRSS of the server process once it is idle after the runs (the server never
  imports torch; the children that do have ended).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "fixtures" / "architectures" / "good_resnet18_cifar.py"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def session(root: Path, path: Path, want_phases: int, settings: dict) -> tuple[list[tuple[float, int]], float]:
    """Open ``path``; the times (from didOpen) and sizes of the publishes until
    ``want_phases`` arrived and the server was idle for a second, and its RSS then."""
    client = LanguageClient("bench", "1")
    got: list[tuple[float, int]] = []
    done = asyncio.Event()
    opened = 0.0

    @client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def publish(params: types.PublishDiagnosticsParams) -> None:
        # The ResNet is clean: publishes are told apart by order (static, then verified).
        got.append((time.perf_counter() - opened, len(params.diagnostics)))
        if len(got) >= want_phases:
            done.set()

    env = {k: v for k, v in os.environ.items() if k != "ARCHLINT_NO_CACHE"}
    await client.start_io(sys.executable, "-m", "archlint", "lsp", env=env, cwd=str(root))
    pid = client._server.pid
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(), root_uri=root.as_uri(),
        workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name="bench")],
        initialization_options={"archlint": settings}))
    client.initialized(types.InitializedParams())
    opened = time.perf_counter()
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=path.as_uri(), language_id="python", version=1, text=path.read_text())))
    await asyncio.wait_for(done.wait(), 300)
    await asyncio.sleep(1.0)  # idle: the children have ended
    rss = rss_mib(pid)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return got, rss


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", type=Path, default=MODEL, help="the model file to open (default: the CIFAR ResNet-18)")
    parser.add_argument("--no-fixes", action="store_true", help="the server setting fixes = false")
    args = parser.parse_args()
    model = args.model.resolve()
    settings = {"fixes": not args.no_fixes}
    cold_first, cold_verified, hits, rss, cli, torch_import = [], [], [], [], [], []
    for _ in range(args.repeat):
        root = Path(tempfile.mkdtemp(prefix="archlint-bench-lsp-"))
        try:
            path = root / model.name
            shutil.copy(model, path)
            got, idle = await session(root, path, want_phases=2, settings=settings)
            assert len(got) == 2, got  # the static pass, then the verified one
            cold_first.append(got[0][0])
            cold_verified.append(got[1][0])
            rss.append(idle)
            got, idle = await session(root, path, want_phases=1, settings=settings)
            assert len(got) == 1, got  # the cache's verified result, and nothing after it
            hits.append(got[0][0])
            rss.append(idle)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "archlint", "check", str(path), "--no-verify", "-n", "-q"],
                           cwd=root, stdout=subprocess.DEVNULL, check=False)
            cli.append(time.perf_counter() - started)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch"], check=True)
            torch_import.append(time.perf_counter() - started)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def show(name: str, values: list[float], unit: str) -> None:
        print(f"{name:<40} median {statistics.median(values):7.2f} {unit}   all: {', '.join(f'{v:.2f}' for v in values)}")

    name = model.relative_to(REPO) if model.is_relative_to(REPO) else model
    print(f"{name}, fixes {'off' if args.no_fixes else 'on'}, {args.repeat} rounds, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    show("didOpen -> first diagnostics (cold)", cold_first, "s")
    show("didOpen -> verified diagnostics (cold)", cold_verified, "s")
    show("didOpen -> diagnostics (cache hit)", hits, "s")
    show("reference: archlint check --no-verify", cli, "s")
    show("reference: python -c 'import torch'", torch_import, "s")
    show("server idle RSS", rss, "MiB")


if __name__ == "__main__":
    asyncio.run(main())
