"""Verified fixes: libcst edits for the rules whose remedy is mechanical, each proven by
measuring the edited model before it is offered.

- ``edits``: the plain-data ``Fix``/``Edit`` a finding carries (no torch, no libcst: the
  parent process reads them from worker reports and the cache);
- ``cst``: libcst helpers shared by the fixers (find the call a span points at, build the
  reference to a module from the class that constructs it);
- one module per fix family (``remove_activation``, ``groupnorm``, ``init_gain``,
  ``branch_scale``, ``leaky_slope``, ``norm_before_activation``), each with
  ``propose(ctx) -> Proposal | None``; ``registry`` maps rule codes to them;
- ``verify``: applies a proposal to a copy of the file in a temporary folder, checks the
  copy with the engine and measures it: a fix is offered only when its rule no longer
  reports, no new finding appears and the forward pass keeps its input and output shapes;
- ``apply``: writes verified edits back, atomically, keeping encoding and line endings, and
  refusing a file that changed since it was analysed.
"""
