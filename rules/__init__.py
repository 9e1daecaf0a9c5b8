"""archlint's rules, one module per rule (installed as ``archlint.rules``).

Each module's docstring is the rule's documentation; see ``archlint.rule`` for the API.
"""
