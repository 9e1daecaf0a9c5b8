"""Stands for a third-party library living in the user's tree (tests pass it as extra_skip)."""

from archlint.sourcemap import user_call_site


def probe(x):
    return user_call_site()


def probe_skipping_me(x):
    return user_call_site(extra_skip=(__file__,))
