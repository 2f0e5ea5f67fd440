"""What a kernel's route and its notes to a session learning its thread mode (``framework.thread_mode``) were, for the
tests of the convolution routes."""

from onyxrt.framework import thread_mode


def routes_taken(monkeypatch, module, name: str) -> list:
    """The results of every call of ``module.name`` (a route builder: its route, or None where it declines) from now on
    in the test, while the calls still return them."""
    taken: list = []
    route = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a: taken.append(route(*a)) or taken[-1])
    return taken


def asks_for_split_mode(run) -> bool:
    """Whether ``run()`` notes a product the pool's split mode runs faster (as in a signature's learning run)."""
    record: list = []
    token = thread_mode._RECORD.set(record)
    try:
        run()
    finally:
        thread_mode._RECORD.reset(token)
    return any(record)
