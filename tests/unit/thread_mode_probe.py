"""What a kernel tells a session learning its thread mode (``framework.thread_mode``), for the tests of kernels that
ask for the split mode."""

from onyxrt.framework import thread_mode


def asks_for_split_mode(run) -> bool:
    """Whether ``run()`` notes a product the pool's split mode runs faster (as in a signature's learning run)."""
    record: list = []
    token = thread_mode._RECORD.set(record)
    try:
        run()
    finally:
        thread_mode._RECORD.reset(token)
    return any(record)
