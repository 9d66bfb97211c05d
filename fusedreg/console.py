"""What the command-line jobs (`python -m fusedreg demo` and `sweep`) share for running and printing: torch's CPU
threads for the run, the progress bar and the status lines on stderr, and wrapped text on stdout."""
import contextlib
import sys
import textwrap

import torch


@contextlib.contextmanager
def cpu_threads(n):
    """torch's intra-op threads set to n for the block, restored after. The demo's model is tiny: one thread
    is fastest, and a thread pool on a busy machine turns microsecond ops into milliseconds of waiting."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_progress(total, desc, enabled, unit="step"):
    """A tqdm bar on stderr (shown on terminals; enabled=False hides it), or None when tqdm is missing. It
    appears after a second, so its first ETA is not taken from the slow first steps (imports, warm-up)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None if enabled else True,
                dynamic_ncols=True, delay=1.0, smoothing=0.1)


def status(text, enabled):
    """A line on stderr saying what runs next, where a progress bar would be shown."""
    if enabled and sys.stderr.isatty():
        print(text, file=sys.stderr, flush=True)


def wrap(text, width=110):
    return textwrap.fill(text, width, subsequent_indent="  ", break_on_hyphens=False)


def plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")
