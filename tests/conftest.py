"""Shared pytest configuration for aiouring's tests.

Kept deliberately small: only helpers that more than one test module needs and
that touch machine-wide state, so that the restoring is written once.
"""

import os

import pytest

_MEMINFO = "/proc/meminfo"
_POOL_2MB = "/sys/kernel/mm/hugepages/hugepages-2048kB/"


def _default_huge_page_kb():
    try:
        with open(_MEMINFO) as f:
            for line in f:
                if line.startswith("Hugepagesize:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _read_int(path):
    with open(path) as f:
        return int(f.read().split()[0])


def _write_int(path, value):
    with open(path, "w") as f:
        f.write(f"{value}\n")


@pytest.fixture
def reserved_huge_pages():
    """Make sure at least 8 free 2 MiB hugetlb pages exist, restoring the pool
    size afterwards.

    The pool is machine-wide and other processes (other test runs too) may
    be using or resizing it, so we grow it by what we need rather than set an
    absolute number, and afterwards take back exactly what we added, even if
    the test fails: alone, that restores the previous value; beside another
    run that resized the pool meanwhile, it does not undo that run's change.

    /proc/sys/vm/nr_hugepages only sizes the *default* huge page pool, which
    can be 1 GiB; aiouring asks for 2 MiB pages explicitly, so we size that
    pool through sysfs when the default differs.
    """
    if os.geteuid() != 0:
        pytest.skip("reserving huge pages needs root")
    if not os.path.exists(_POOL_2MB + "nr_hugepages"):
        pytest.skip("this kernel has no 2 MiB hugetlb pool")
    if _default_huge_page_kb() == 2048:
        knob = "/proc/sys/vm/nr_hugepages"
    else:
        knob = _POOL_2MB + "nr_hugepages"
    want_free = 8
    added = 0
    try:
        # Pages of a ring closed a moment ago may still be held: io_uring
        # unpins its memory from a kernel worker after close() returns, and
        # such a page can be folded back into the pool we grow. So grow
        # until enough are free, a few times at most.
        for _ in range(3):
            free = _read_int(_POOL_2MB + "free_hugepages")
            if free >= want_free:
                break
            before = _read_int(knob)
            _write_int(knob, before + want_free - free)
            added += _read_int(knob) - before   # what the kernel really granted
        free = _read_int(_POOL_2MB + "free_hugepages")
        if free < want_free:
            # The kernel grants what it can find contiguous; a fragmented
            # machine may give fewer. That is the machine, not aiouring.
            pytest.skip(f"the kernel could only reserve {free} free 2 MiB huge pages")
        yield free
    finally:
        if added:
            _write_int(knob, max(0, _read_int(knob) - added))
