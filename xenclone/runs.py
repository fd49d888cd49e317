"""Runs of consecutive numbers (pages, store slots): one I/O call per run."""


def runs(numbers):
    """(index, length) of each run of consecutive numbers in the list."""
    i = 0
    while i < len(numbers):
        j = i + 1
        while j < len(numbers) and numbers[j] == numbers[j - 1] + 1:
            j += 1
        yield i, j - i
        i = j
